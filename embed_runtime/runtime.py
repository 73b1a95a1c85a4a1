"""The :class:`Runtime`: one loaded model, validated runs, and the fast paths.

Fast paths (each compared with the plain path in the tests):

* **IO binding with reuse**: after a first plain run for a given input shape, each thread keeps
  ``IOBinding`` objects with bound input and output buffers for that shape (LRU over
  ``RuntimeOptions.io_binding_cache`` shapes, outputs up to ``RuntimeOptions.io_binding_max_bytes``,
  at most :data:`~embed_runtime.session.MAX_BUFFER_SETS` sets per shape). Later calls copy the ids in,
  run, and return the bound output arrays themselves, without a copy. A set is run again only when its
  reference counts show that the caller has dropped every array (and view) it returned, so no caller
  ever sees a result change; when all sets are held, the call takes the plain path. The buffers live as
  long as their binding: onnxruntime writes through the bound pointers.
* ``out=``: caller-owned arrays are bound as outputs, so a big batch is written straight into them.
* :meth:`Runtime.run_batched`: chunked streaming with memory bounded by the chunk size.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .contract import ModelMetadata
from .errors import EmbedRuntimeError, InferenceError, InputTypeError, InvalidInputError, ModelLoadError
from .inputs import FastCheck, TensorSpec, prepare_all
from .session import BoundShape, Providers, RuntimeOptions, Shape, create_session, numpy_dtype

_Key = tuple[tuple[Shape, ...], tuple[str, ...]]


def _spec(
    arg: Any, input_dims: Mapping[str, int] | None = None, padding_ids: Mapping[str, int] | None = None
) -> TensorSpec:
    """A :class:`TensorSpec` from an onnxruntime ``NodeArg``."""
    raw = list(arg.shape) if isinstance(arg.shape, (list, tuple)) else []
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in raw)
    names = tuple(d if isinstance(d, str) and d else None for d in raw)
    length = shape[1] if input_dims is not None and len(shape) == 2 else None
    return TensorSpec(
        name=arg.name,
        dtype=numpy_dtype(arg.type),
        shape=shape,
        input_dim=None if input_dims is None else input_dims.get(arg.name),
        input_length=length,
        dim_names=names,
        padding_id=None if padding_ids is None else padding_ids.get(arg.name),
    )


class Runtime:
    """A model loaded into onnxruntime; build one with :func:`load`.

    Thread-safe: :meth:`run` may be called from several threads at once (each thread has its own bound
    buffers).

    Attributes:
        path: the model file.
        inputs: one :class:`TensorSpec` per graph input, with ``input_dim`` / ``input_length`` when known.
        outputs: one :class:`TensorSpec` per graph output.
        metadata: the contract's :class:`~embed_runtime.contract.ModelMetadata` (empty for foreign files).
        options: the :class:`RuntimeOptions` in effect (``threads=`` folded in).
        session: the underlying ``onnxruntime.InferenceSession``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Providers = "auto",
        threads: int | None = None,
        options: RuntimeOptions | None = None,
    ):
        opts = options or RuntimeOptions()
        if threads is not None:
            opts = replace(opts, intra_op_threads=threads)
        self.options = opts
        self.path = Path(path)
        self.session = create_session(self.path, providers, opts)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.metadata = ModelMetadata.from_props(props)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{self.path}: malformed embed_runtime metadata: {exc}") from None
        dims = self.metadata.input_dims()
        graph_inputs = [a.name for a in self.session.get_inputs()]
        unknown = sorted(set(dims) - set(graph_inputs))
        if unknown:  # the ids of those embeddings would go unchecked: refuse rather than guess
            raise ModelLoadError(
                f"{self.path}: metadata names input(s) {', '.join(map(repr, unknown))} for an embedding, but "
                f"the graph's inputs are {', '.join(map(repr, graph_inputs))}"
            )
        pads = self.metadata.padding_ids()
        self.inputs = [_spec(a, dims, pads) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._output_names = tuple(s.name for s in self.outputs)
        self._out_specs = {s.name: s for s in self.outputs}
        self._local = threading.local()
        self._checks = {s.name: FastCheck(s) for s in self.inputs}
        self._fast_check = self._checks[self.inputs[0].name] if len(self.inputs) == 1 else None
        self._io_binding = opts.io_binding
        self._hot_dtype, self._hot_limit = self._hot_plan()

    def _hot_plan(self) -> tuple[np.dtype[Any] | None, int | None]:
        """(ids dtype, largest valid id) for the repeated-shape hot path of :meth:`run`; dtype ``None``
        when the model cannot take it (several inputs, or ids that need more than one max to check)."""
        if self._fast_check is None or not self._io_binding:
            return None, None
        spec = self.inputs[0]
        plan = self._fast_check.plans.get(spec.dtype)
        if plan is None or plan.minmax or (not plan.skip and plan.view is None):
            return None, None
        return spec.dtype, None if plan.skip else plan.limit

    def __repr__(self) -> str:
        return f"Runtime({str(self.path)!r}, providers={self.providers})"

    @property
    def providers(self) -> list[str]:
        """Execution providers onnxruntime really uses for this session, best first."""
        return list(self.session.get_providers())

    def _select(self, outputs: Sequence[str] | str | None) -> tuple[str, ...]:
        if outputs is None:
            return self._output_names
        names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        unknown = [n for n in names if n not in self._out_specs]
        if unknown or not names:
            raise InvalidInputError(
                f"unknown output(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"the model's outputs are {', '.join(self._output_names)}"
            )
        return names

    def prepare(self, inputs: Any, *, single_sequence: bool = False) -> dict[str, np.ndarray]:
        """Validate ``inputs`` exactly as :meth:`run` does and return what onnxruntime would be fed:
        ``{input name: C-contiguous array of the graph's dtype}`` (the caller's array when it already is
        one). Raises :class:`InvalidInputError` / :class:`InputTypeError` like :meth:`run`."""
        fast = self._fast_check
        if fast is not None and type(inputs) is np.ndarray and not single_sequence:
            checked = fast(inputs)
            if checked is not None:
                return {fast.name: checked}
        return prepare_all(inputs, self.inputs, single_sequence, self._checks)

    def run(
        self,
        inputs: Any,
        *,
        out: np.ndarray | Mapping[str, np.ndarray] | None = None,
        outputs: Sequence[str] | str | None = None,
        single_sequence: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model on validated ids and return ``{output name: array}``, masks included.

        Args:
            inputs: ids as a numpy array of any integer dtype, a list of lists, or a ragged list of
                sequences (padded with 0); a dict ``{input name: ids}`` for models with several inputs.
            out: preallocated output arrays (``{name: array}``, or one array when one output is requested);
                they are written in place and returned. Shapes, dtypes and contiguity are checked.
            outputs: names of the outputs to compute (default: all).
            single_sequence: ``inputs`` is one 1-D sequence; the outputs keep a batch axis of 1.

        Returned arrays belong to the caller: no later call writes into them while the caller holds them
        or a view of them (arrays passed in ``out`` are written by the calls they are passed to).
        Raises :class:`InvalidInputError` / :class:`InputTypeError` for bad inputs and
        :class:`InferenceError` when onnxruntime fails.
        """
        if (  # same shape as this thread's last call: ids are copied into a bound buffer and checked there
            self._hot_dtype is not None
            and type(inputs) is np.ndarray
            and inputs.dtype == self._hot_dtype
            and out is None
            and outputs is None
            and not single_sequence
        ):
            hot = getattr(self._local, "hot", None)
            if hot is not None and inputs.shape == hot[0] and inputs.flags.c_contiguous:
                try:
                    result = hot[1].run_unchecked_ids(inputs, self._hot_limit)
                except Exception:  # let the general path below run it, and report any failure
                    self._local.hot = result = None
                if result is not None:
                    return result
        feeds = self.prepare(inputs, single_sequence=single_sequence)
        shapes: tuple[Shape, ...] = tuple(a.shape for a in feeds.values())  # in graph input order
        names = self._output_names if outputs is None else self._select(outputs)
        if out is not None:
            targets = self._check_out(out, names, feeds)
            if (
                self._io_binding
                and sum(a.nbytes for a in targets.values()) <= self.options.io_binding_max_bytes
            ):
                # small outputs: the bound buffers are cheaper than a new IOBinding; copy into out=
                result = self._run_reusing(feeds, shapes, names, outputs is None)
                for name, target in targets.items():
                    # _check_out cannot see axes the graph leaves unstated: never broadcast into them
                    if target.shape != result[name].shape:
                        raise InvalidInputError(
                            f"out[{name!r}] has shape {target.shape} but output {name!r} is "
                            f"{result[name].shape} for these inputs"
                        )
                    np.copyto(target, result[name])
                return {n: targets.get(n, result[n]) for n in names}
            return self._run_into(feeds, names, targets)
        if not self._io_binding:
            return self._run_plain(feeds, names)
        return self._run_reusing(feeds, shapes, names, outputs is None)

    def _run_reusing(
        self, feeds: dict[str, np.ndarray], shapes: tuple[Shape, ...], names: tuple[str, ...], hot: bool
    ) -> dict[str, np.ndarray]:
        """Run through this thread's bound buffer sets for these shapes (made on the second call)."""
        key = (shapes, names)
        try:
            cache = self._local.cache
        except AttributeError:
            cache = self._local.cache = OrderedDict()
        bound = cache.get(key)
        if bound is None:
            result = self._run_plain(feeds, names)
            self._remember(cache, key, feeds, result)
            return result
        cache.move_to_end(key)
        if self._hot_dtype is not None and hot:
            self._local.hot = (shapes[0], bound)
        try:
            result = bound.run(feeds)
        except Exception:  # e.g. data-dependent output shapes: forget the binding, run plainly
            del cache[key]
            self._local.hot = None
            result = None
        return self._run_plain(feeds, names) if result is None else result

    def _remember(
        self,
        cache: OrderedDict[_Key, BoundShape],
        key: _Key,
        feeds: dict[str, np.ndarray],
        result: dict[str, np.ndarray],
    ) -> None:
        """Bind buffers for this input shape when its outputs are plain, small and non-empty tensors."""
        arrays = list(result.values()) + list(feeds.values())
        if any(not isinstance(a, np.ndarray) or a.dtype == object or a.size == 0 for a in arrays):
            return
        if sum(a.nbytes for a in result.values()) > self.options.io_binding_max_bytes:
            return
        cache[key] = BoundShape(self.session, feeds, result)
        while len(cache) > self.options.io_binding_cache:
            cache.popitem(last=False)
            self._local.hot = None  # it may point at the evicted entry

    def _run_plain(self, feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(list(names), feeds)
        except Exception as exc:
            if any(a.size == 0 for a in feeds.values()):
                return {n: self._empty(n, feeds) for n in names}
            raise InferenceError(f"onnxruntime failed running {self.path.name}: {exc}") from exc
        return dict(zip(names, values))

    def expected_shape(self, name: str, feeds: Mapping[str, np.ndarray]) -> tuple[int | None, ...]:
        """Shape of output ``name`` for these (prepared) feeds: static dims, and dynamic dims whose
        symbolic name is shared with an input axis; ``None`` where the graph does not say."""
        sizes: dict[str, int] = {}
        for spec in self.inputs:
            if spec.name in feeds:
                for dim_name, size in zip(spec.dim_names, feeds[spec.name].shape):
                    if dim_name is not None:
                        sizes[dim_name] = size
        spec = self._out_specs[name]
        return tuple(
            static if static is not None else sizes.get(dim_name or "")
            for static, dim_name in zip(spec.shape, spec.dim_names or (None,) * len(spec.shape))
        )

    def _empty(self, name: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """An empty output for an empty batch that onnxruntime refused to run."""
        shape = [0 if d is None else d for d in self.expected_shape(name, feeds)]
        if shape:
            shape[0] = 0
        return np.empty(tuple(shape), dtype=self._out_specs[name].dtype)

    def _check_out(
        self,
        out: np.ndarray | Mapping[str, np.ndarray],
        names: tuple[str, ...],
        feeds: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Validate ``out`` against the outputs these feeds produce."""
        if isinstance(out, np.ndarray):
            if len(names) != 1:
                raise InvalidInputError(
                    f"out= is a single array but {len(names)} outputs are requested ({', '.join(names)}); "
                    "pass a dict {output name: array} or outputs=[name]"
                )
            out = {names[0]: out}
        elif not isinstance(out, Mapping):
            raise InputTypeError(f"out= must be a numpy array or a dict of them, not {type(out).__name__}")
        unknown = [n for n in out if n not in names]
        if unknown:
            raise InvalidInputError(
                f"out= names {', '.join(map(repr, unknown))}, which is not among the requested outputs "
                f"{', '.join(names)}"
            )
        for name, arr in out.items():
            spec = self._out_specs[name]
            if not isinstance(arr, np.ndarray):
                raise InputTypeError(f"out[{name!r}] must be a numpy array, not {type(arr).__name__}")
            if arr.dtype != spec.dtype:
                raise InputTypeError(f"out[{name!r}] has dtype {arr.dtype}; output {name!r} is {spec.dtype}")
            if not (arr.flags.c_contiguous and arr.flags.writeable):
                raise InvalidInputError(f"out[{name!r}] must be a writeable C-contiguous array")
            want = self.expected_shape(name, feeds)
            if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
                shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
                raise InvalidInputError(f"out[{name!r}] has shape {arr.shape}; these inputs give {shown}")
        return dict(out)

    def _run_into(
        self, feeds: dict[str, np.ndarray], names: tuple[str, ...], targets: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Bind the (checked) ``targets`` as outputs so onnxruntime writes straight into them."""
        if any(a.size == 0 for a in feeds.values()):
            plain = self._run_plain(feeds, tuple(n for n in names if n not in targets))
            return {n: targets[n] if n in targets else plain[n] for n in names}
        binding = self.session.io_binding()
        for name, a in feeds.items():
            binding.bind_cpu_input(name, a)
        for name in names:
            if name in targets:
                arr = targets[name]
                binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            if "shape" in str(exc) and "pre-allocated" in str(exc):
                raise InvalidInputError(f"out= does not fit the outputs of these inputs: {exc}") from exc
            raise InferenceError(f"onnxruntime failed running {self.path.name}: {exc}") from exc
        values = binding.get_outputs()
        return {n: targets[n] if n in targets else values[i].numpy() for i, n in enumerate(names)}

    def run_batched(
        self,
        inputs: Any,
        batch_size: int = 1024,
        progress: bool = True,
        *,
        outputs: Sequence[str] | str | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run over ``inputs`` in chunks of ``batch_size`` sequences, yielding one result dict per chunk.

        ``inputs`` is an array, a dict of arrays (same batch length), or any iterable of sequences (a
        generator works: it is consumed one chunk at a time, so memory stays bounded by the chunk size).
        Ragged chunks are padded to their own longest sequence. ``progress`` shows a tqdm bar when tqdm is
        installed.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        chunks, total = _chunks(inputs, batch_size, [s.name for s in self.inputs])
        bar = _progress_bar(total, progress)
        try:
            for chunk in chunks:
                result = self.run(chunk, outputs=outputs)
                if bar is not None:
                    bar.update(_batch_len(chunk))
                yield result
        finally:
            if bar is not None:
                bar.close()


def _batch_len(chunk: Any) -> int:
    if isinstance(chunk, Mapping):
        chunk = next(iter(chunk.values()))
    return len(chunk)


def _chunks(inputs: Any, size: int, names: list[str]) -> tuple[Iterator[Any], int | None]:
    """Split ``inputs`` along the batch axis; returns the chunk iterator and the total, when known."""
    if isinstance(inputs, Mapping):
        arrays = {k: v if isinstance(v, np.ndarray) else list(v) for k, v in inputs.items()}
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidInputError(f"inputs have different batch lengths: {lengths}")
        total = next(iter(lengths.values()), 0)
        return (({k: v[i : i + size] for k, v in arrays.items()} for i in range(0, total, size)), total)
    if isinstance(inputs, (np.ndarray, list, tuple)):
        if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
            raise InvalidInputError(f"input {names[0]!r} is a scalar; expected (batch, seq) ids")
        return ((inputs[i : i + size] for i in range(0, len(inputs), size)), len(inputs))
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        it = iter(inputs)
        return (iter(lambda: list(islice(it, size)), [])), getattr(inputs, "__len__", lambda: None)()
    raise InputTypeError(
        f"run_batched needs an array, a dict or an iterable of sequences, not {type(inputs).__name__}"
    )


def _progress_bar(total: int | None, enabled: bool) -> Any | None:
    """A tqdm bar, or ``None`` when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="seq", desc="embed_runtime")


def load(
    path: str | os.PathLike[str],
    providers: Providers = "auto",
    threads: int | None = None,
    options: RuntimeOptions | None = None,
) -> Runtime:
    """Load an ONNX model for inference.

    Args:
        path: the ``.onnx`` file.
        providers: ``"auto"`` (best available, CPU last) or an explicit list of provider names or
            ``(name, options)`` pairs, honoured exactly; short aliases ``"cpu"``, ``"cuda"``, ``"webgpu"``...
        threads: intra-op threads (shortcut for ``RuntimeOptions.intra_op_threads``).
        options: a :class:`RuntimeOptions`.

    Raises :class:`ModelLoadError` and :class:`ProviderError`.
    """
    try:
        return Runtime(path, providers=providers, threads=threads, options=options)
    except EmbedRuntimeError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc
