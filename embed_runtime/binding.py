"""IO-binding reuse: the small-call fast path of :class:`~embed_runtime.Runtime`, behind one object,
:class:`Binder`.

After a first plain run for a given input shape (and output selection), each thread keeps ``IOBinding``
objects with bound input and output buffers for that shape (LRU over ``RuntimeOptions.io_binding_cache``
shapes; outputs plus input copies up to ``RuntimeOptions.io_binding_max_bytes`` per set; at most
:data:`MAX_BUFFER_SETS` sets per shape). Later calls copy the ids in, run, and return fresh views of the bound output arrays, without a copy
of the data: a caller may reshape, retype, freeze or try to resize what it gets without touching the
buffers (a view owns no data, so numpy refuses to resize it). A set is run again only when its reference
counts show that the caller has dropped every array (and view) it returned, so no caller ever sees a
result change; when all sets are held, the call takes the plain path. The buffers live as long as their binding: onnxruntime writes through the bound pointers.

The hot path (:meth:`Binder.run_hot`): a single-input model called again with an array of the shape and
dtype of this thread's last call skips the general validation; the ids are copied into a free bound buffer
and checked there by :meth:`~embed_runtime.inputs.RangePlan.check`, the same id check as every other path.

``out=`` (:func:`run_into`): caller-owned arrays (checked by :func:`~embed_runtime.tensors.check_out`) bound
as outputs, so that a big batch is written straight into them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from sys import getrefcount
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import InferenceError, InvalidInputError
from .inputs import RangePlan, range_plan
from .options import RuntimeOptions
from .tensors import TensorInfo

MAX_BUFFER_SETS = 3
"""Buffer sets per input shape: enough for a caller that keeps the previous result while asking the next."""

Shape = tuple[int, ...]
Results = dict[str, np.ndarray]
_Layout = tuple[tuple[tuple[str, Shape, np.dtype[Any]], ...], ...]
_Key = tuple[tuple[Shape, ...], tuple[str, ...]]

_fresh_view = np.ndarray.view
"""``ndarray.view()`` unbound: a new array object over the same memory (about 0.1 us)."""


def private_run_with_iobinding(
    sess: ort.InferenceSession, binding: ort.IOBinding
) -> Callable[[], None] | None:
    """onnxruntime's pybind ``run_with_iobinding`` bound to ``binding``, or ``None`` where it cannot be used.

    The one place that reaches into onnxruntime's private attributes (``InferenceSession._sess`` and
    ``IOBinding._iobinding``, the pybind objects under the public wrappers): the public
    ``InferenceSession.run_with_iobinding`` adds WebGPU graph-capture bookkeeping, a few microseconds per
    call, that these bindings never use. ``None`` when this onnxruntime lacks those attributes or the
    session captures GPU graphs; the caller then uses the public method. ``tests/runtime/test_binding.py``
    fails when this onnxruntime no longer offers the private call.
    """
    inner_sess, inner_binding = getattr(sess, "_sess", None), getattr(binding, "_iobinding", None)
    if inner_sess is None or inner_binding is None:
        return None
    captures = getattr(inner_sess, "is_webgpu_graph_capture_enabled", None)
    if captures is not None and captures():
        return None
    return partial(inner_sess.run_with_iobinding, inner_binding, None)


class _BufferSet:
    """One ``IOBinding`` with its own input and output buffers, bound once."""

    __slots__ = (
        "arrays",
        "binding",
        "idle_refs",
        "ids",
        "ids_view",
        "inputs",
        "names",
        "outputs",
        "run_bound",
        "single",
    )

    def __init__(self, sess: ort.InferenceSession, layout: _Layout, plan: RangePlan | None):
        self.binding = sess.io_binding()
        self.inputs = {name: np.empty(shape, dtype) for name, shape, dtype in layout[0]}
        self.outputs = {name: np.empty(shape, dtype) for name, shape, dtype in layout[1]}
        for name, buf in self.inputs.items():
            self.binding.bind_cpu_input(name, buf)
        for name, buf in self.outputs.items():
            self.binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        self.names = tuple(self.outputs)
        self.single = self.names[0] if len(self.names) == 1 else None
        self.arrays = tuple(self.outputs.values())
        # the hot path copies ids into the first input and checks them there through a view made once
        self.ids = next(iter(self.inputs.values()))
        flat = self.ids.reshape(-1)
        self.ids_view = flat if plan is None else plan.view_ids(flat)
        self.run_bound = private_run_with_iobinding(sess, self.binding) or partial(
            sess.run_with_iobinding, self.binding
        )
        self.idle_refs: list[int] = []  # set by BoundShape once this frame's locals are gone

    def results(self) -> Results:
        """Fresh views of the output buffers, one per output: what a caller does to a view's shape, dtype
        or flags stays with that view, so the next call of this set still finds its buffers as bound."""
        if self.single is not None:  # one output, the common case: ~0.2 us cheaper than the general form
            return {self.single: self.arrays[0].view()}
        return dict(zip(self.names, map(_fresh_view, self.arrays)))

    def refs(self) -> list[int]:
        """Reference counts of the output buffers; above :attr:`idle_refs` while a caller holds one (or a
        view of one: a view references its base array)."""
        return list(map(getrefcount, self.arrays))


class BoundShape:
    """The buffer sets of one input shape. Results are the bound output arrays themselves (no copy); a set
    is only run again once the caller has dropped every reference to its previous results, so nobody ever
    sees an array change under them. A loop ``out = rt.run(ids)`` alternates between two sets."""

    __slots__ = ("layout", "plan", "sess", "sets")

    def __init__(
        self,
        sess: ort.InferenceSession,
        feeds: Mapping[str, np.ndarray],
        like: Mapping[str, np.ndarray],
        plan: RangePlan | None,
    ):
        self.sess = sess
        self.plan = plan
        self.layout: _Layout = (
            tuple((name, a.shape, a.dtype) for name, a in feeds.items()),
            tuple((name, a.shape, a.dtype) for name, a in like.items()),
        )
        self.sets: list[_BufferSet] = []

    def free_set(self) -> _BufferSet | None:
        """A buffer set no caller holds results of, made if needed; ``None`` when all are held."""
        for buffers in self.sets:
            if buffers.refs() == buffers.idle_refs:
                return buffers
        if len(self.sets) >= MAX_BUFFER_SETS:
            return None
        buffers = _BufferSet(self.sess, self.layout, self.plan)
        buffers.idle_refs = buffers.refs()
        self.sets.append(buffers)
        return buffers

    def run(self, feeds: Mapping[str, np.ndarray]) -> Results | None:
        """The outputs, or ``None`` when every set is still held and no new one may be made."""
        buffers = self.free_set()
        if buffers is None:
            return None
        inputs = buffers.inputs
        for name, a in feeds.items():
            inputs[name][...] = a
        buffers.run_bound()
        return buffers.results()


class Binder:
    """The IO-binding reuse of one runtime, per thread. :class:`~embed_runtime.Runtime` asks it first and
    takes the plain path when it answers ``None``:

    * :meth:`run_hot` with the caller's array, before any validation (the repeated-shape hot path);
    * :meth:`run` with validated feeds; after a plain run, :meth:`learn` binds buffers for next time.
    """

    def __init__(self, session: ort.InferenceSession, options: RuntimeOptions, inputs: Sequence[TensorInfo]):
        self.session = session
        self.max_bytes = options.io_binding_max_bytes
        self.max_shapes = options.io_binding_cache
        only = inputs[0] if len(inputs) == 1 and inputs[0].dtype.kind in "iu" else None
        # the hot path serves single-input models whose ids arrive in the graph's own dtype
        self.hot_dtype = None if only is None else only.dtype
        self.hot_plan = None if only is None else range_plan(only.dtype, only)
        self._local = threading.local()

    def _cache(self) -> OrderedDict[_Key, BoundShape]:
        """This thread's bound shapes, least recently used first."""
        try:
            cache: OrderedDict[_Key, BoundShape] = self._local.cache
        except AttributeError:
            cache = self._local.cache = OrderedDict()
        return cache

    def run_hot(self, ids: np.ndarray) -> Results | None:
        """The outputs for ``ids`` when they have the dtype and shape of this thread's last call (ids are
        copied into a free bound buffer and checked there); ``None`` otherwise, or when an id is out of
        range (the general path then raises) or every buffer set is held."""
        hot: tuple[Shape, BoundShape, RangePlan] | None = getattr(self._local, "hot", None)
        if hot is None or ids.shape != hot[0] or ids.dtype != self.hot_dtype or not ids.flags.c_contiguous:
            return None
        try:
            buffers = hot[1].free_set()
            if buffers is None:
                return None
            buffers.ids[...] = ids
            if not hot[2].check(buffers.ids_view):
                return None
            buffers.run_bound()
        except Exception:  # let the general path run it, and report any failure
            self._local.hot = None
            return None
        return buffers.results()

    def run(self, feeds: Mapping[str, np.ndarray], names: tuple[str, ...], hot: bool) -> Results | None:
        """The outputs from this thread's bound buffers for these shapes and outputs (``hot``: later calls
        of this shape may take :meth:`run_hot`); ``None`` on the first call of a shape, when every set is
        held, or when onnxruntime refuses the binding (e.g. data-dependent output shapes: it is dropped)."""
        shapes = tuple(a.shape for a in feeds.values())
        cache = self._cache()
        key = (shapes, names)
        bound = cache.get(key)
        if bound is None:
            return None
        cache.move_to_end(key)
        if hot and self.hot_plan is not None:
            self._local.hot = (shapes[0], bound, self.hot_plan)
        try:
            return bound.run(feeds)
        except Exception:
            del cache[key]
            self._local.hot = None
            return None

    def learn(self, feeds: Mapping[str, np.ndarray], names: tuple[str, ...], result: Results) -> None:
        """After a plain run, bind buffers for these shapes when none are bound yet and the outputs are
        plain, small and non-empty tensors."""
        cache = self._cache()
        key = (tuple(a.shape for a in feeds.values()), names)
        if key in cache:
            return
        arrays = list(result.values()) + list(feeds.values())
        if any(not isinstance(a, np.ndarray) or a.dtype == object or a.size == 0 for a in arrays):
            return
        if sum(a.nbytes for a in arrays) > self.max_bytes:  # outputs and the bound input copies
            return
        cache[key] = BoundShape(self.session, feeds, result, self.hot_plan)
        while len(cache) > self.max_shapes:
            cache.popitem(last=False)
            self._local.hot = None  # it may point at the evicted entry


def run_into(
    sess: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    names: tuple[str, ...],
    targets: Mapping[str, np.ndarray],
    model: str,
) -> Results:
    """Run ``model`` once with the (checked, non-empty) ``targets`` bound as outputs, so that onnxruntime
    writes straight into them; the other requested outputs are allocated by onnxruntime."""
    binding = sess.io_binding()
    for name, a in feeds.items():
        binding.bind_cpu_input(name, a)
    for name in names:
        if name in targets:
            arr = targets[name]
            binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        else:
            binding.bind_output(name, "cpu")
    try:
        sess.run_with_iobinding(binding)
    except Exception as exc:
        if "shape" in str(exc) and "pre-allocated" in str(exc):
            raise InvalidInputError(f"out= does not fit the outputs of these inputs: {exc}") from exc
        raise InferenceError(f"onnxruntime failed running {model}: {exc}") from exc
    values = binding.get_outputs()
    return {n: targets[n] if n in targets else values[i].numpy() for i, n in enumerate(names)}
