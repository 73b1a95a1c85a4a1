"""Turning what users pass (arrays of any integer dtype, lists, ragged lists) into validated graph inputs.

Validation runs before onnxruntime sees the data, because ONNX ``Gather`` silently wraps negative ids to
the end of the table. It is one fused reduction per input on the happy path: the ids are viewed as
unsigned integers, so one ``max`` catches negative ids (they become huge) and ids ``>= input_dim`` at once.
The position of the first bad value is only searched for once an error is certain.

Conventions:

* numpy arrays must have exactly the model's rank (``(batch, seq)``) and fixed lengths;
* Python lists of sequences may be ragged: they are padded with :data:`~embed_runtime.contract.PADDING_ID`
  to the longest sequence, or to the model's fixed length;
* ``single_sequence=True`` takes one sequence (rank 1) and adds a batch axis of 1, which the outputs keep.

Where a new validation rule goes: each kind of rule has exactly one place, which every path runs.

* A rule on id values goes in :meth:`RangePlan.check`, the one id check: the general path
  (:func:`check_range`), :class:`FastCheck` and the bound-buffer hot path of :mod:`embed_runtime.binding`
  all call it.
* A rule on shapes goes in :func:`check_shape`: the general path and :class:`FastCheck` call it, and the
  hot path only serves the shape of an earlier call that passed it.
* A rule on types or conversions goes in :func:`~embed_runtime.conversion.as_id_array` (or :func:`prepare`
  for non-id inputs): the fast paths only take native-endian integer arrays, which need no conversion.
* The size limit (:data:`~embed_runtime.conversion.MAX_IDS` ids per input and call) is
  :func:`~embed_runtime.conversion.check_size`: :func:`check_shape` calls it, and so does ragged padding
  before it allocates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from .conversion import MAX_IDS, as_id_array, check_size, pad_ragged, position
from .errors import InputTypeError, InvalidInputError
from .tensors import TensorInfo


def _first(bad: np.ndarray) -> tuple[int, ...]:
    """Index of the first true element of a bool array (C order)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def _int_limits(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def check_shape(array: np.ndarray, info: TensorInfo) -> None:
    """Raise :class:`InvalidInputError` when ``array`` has the wrong rank or a wrong static axis length,
    or more ids than :data:`~embed_runtime.conversion.MAX_IDS`."""
    if array.size > MAX_IDS:
        check_size(info.name, array.shape)
    shape, want = array.shape, info.shape
    if len(shape) == len(want):
        for axis, fixed in enumerate(want):
            if fixed is not None and shape[axis] != fixed:
                what, name = (
                    ("sequence length", "input_length") if axis == 1 else (f"axis {axis} length",) * 2
                )
                raise InvalidInputError(
                    f"input {info.name!r} has {what} {shape[axis]} (shape {shape}) but the model's fixed "
                    f"{name} is {fixed}"
                )
        return
    expected = "(batch, seq)" if len(want) == 2 else f"rank {len(want)}"
    hint = "; pass single_sequence=True for one 1-D sequence" if len(shape) == 1 and len(want) == 2 else ""
    raise InvalidInputError(
        f"input {info.name!r} has rank {len(shape)} (shape {shape}) but the model expects rank "
        f"{len(want)} {expected}{hint}"
    )


max_reduce = np.maximum.reduce
"""``ndarray.max()`` without its Python wrapper."""
min_reduce = np.minimum.reduce

SMALL_BATCH_IDS = 64
"""Up to this many ids, :meth:`RangePlan.check` uses Python's ``max`` (cheaper than any numpy call)."""
ARGMAX_IDS = 1 << 14
"""Up to this many contiguous ids, ``argmax`` finds the largest id faster than a ufunc reduction (whose
fixed cost is about 0.7 us); beyond, the reduction's vector loop wins."""


@dataclass(frozen=True, slots=True)
class RangePlan:
    """How to check ids of one source dtype against one input: the valid ids are ``[lo, hi]``.

    :meth:`view_ids` views the ids as the unsigned ``view`` dtype (``None``: as they are), so that one
    ``max`` compared with ``limit`` catches negative ids (they become huge) and too large ones at once;
    ``minmax`` also compares the ``min`` with ``lo``; ``skip`` when the source dtype cannot hold a bad id.
    """

    lo: int
    hi: int
    skip: bool
    minmax: bool
    view: np.dtype[Any] | None
    limit: int

    def unviewed(self) -> RangePlan:
        """This check for ids as they are, not viewed (``min`` and ``max`` both compared): for a few ids,
        cheaper than making the unsigned view (the lookup hot path, :mod:`embed_runtime.lookup`)."""
        return self if self.view is None else replace(self, minmax=True, view=None, limit=self.hi)

    def view_ids(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` as :meth:`check` reads them (no copy); bound buffers keep this view of their ids."""
        return ids if self.view is None else ids.view(self.view)

    def check(self, ids: np.ndarray) -> bool:
        """Whether every id is valid; ``ids`` as :meth:`view_ids` returns them. The one id check of the
        package: the general path, :class:`FastCheck` and the bound-buffer hot path all call it."""
        size = ids.size
        if self.skip or not size:
            return True
        if size <= SMALL_BATCH_IDS:
            values = ids.tolist() if ids.ndim == 1 else ids.ravel().tolist()
            return max(values) <= self.limit and (not self.minmax or min(values) >= self.lo)
        if self.minmax:
            return int(min_reduce(ids, None)) >= self.lo and int(max_reduce(ids, None)) <= self.limit
        if size <= ARGMAX_IDS and ids.flags.c_contiguous:
            flat = ids.ravel()
            return int(flat[flat.argmax()]) <= self.limit
        return int(max_reduce(ids, None)) <= self.limit


@lru_cache(maxsize=256)
def range_plan(src: np.dtype[Any], info: TensorInfo) -> RangePlan:
    """The cheapest check of ``src``-typed ids for ``info``: one reduction when ``input_dim`` is known."""
    lo_dt, hi_dt = _int_limits(info.dtype)
    src_lo, src_hi = _int_limits(src)
    lo = 0 if info.input_dim is not None else lo_dt
    hi = hi_dt if info.input_dim is None else min(hi_dt, info.input_dim - 1)  # inclusive
    skip = src_lo >= lo and src_hi <= hi
    if lo == 0 and src_lo < 0:  # negatives viewed as unsigned are > src_hi
        return RangePlan(lo, hi, skip, False, np.dtype(f"u{src.itemsize}"), min(hi, src_hi))
    return RangePlan(lo, hi, skip, lo != 0, None, hi)


def check_range(array: np.ndarray, info: TensorInfo, plan: RangePlan | None = None) -> None:
    """Raise :class:`InvalidInputError` unless every id fits ``info`` (``[0, input_dim)`` and the graph dtype).

    Happy path: one ``max`` over an unsigned view of the ids (negatives become huge), by
    :meth:`RangePlan.check`; the first bad id is only searched for once an error is certain.
    """
    plan = plan or range_plan(array.dtype, info)
    if not plan.check(plan.view_ids(array)):
        _raise_range(array, info, plan.lo, plan.hi)


class FastCheck:
    """:func:`prepare` for a native-endian integer ndarray: the same checks (:func:`check_shape`, then
    :func:`check_range`) without the conversions such an array does not need, with the dtype plans made
    once. Returns ``None`` for any other value (the general path then converts or raises)."""

    def __init__(self, info: TensorInfo):
        self.info = info
        self.name = info.name
        self.plans: dict[np.dtype[Any], RangePlan] = {}
        if info.dtype.kind in "iu":
            for kind in "iu":
                for size in (1, 2, 4, 8):
                    dtype = np.dtype(f"{kind}{size}")
                    self.plans[dtype] = range_plan(dtype, info)

    def __call__(self, array: np.ndarray) -> np.ndarray | None:
        """``array`` validated and in the graph's dtype, or ``None`` for the general path."""
        plan = self.plans.get(array.dtype)
        if plan is None:
            return None
        check_shape(array, self.info)
        check_range(array, self.info, plan)
        if array.dtype != self.info.dtype or not array.flags.c_contiguous:
            return np.ascontiguousarray(array, dtype=self.info.dtype)
        return array


def _raise_range(array: np.ndarray, info: TensorInfo, lo: int, hi: int) -> None:
    """Locate the first id outside ``[lo, hi]`` and raise."""
    index = _first((array < lo) | (array > hi))
    value = int(array[index])
    if info.input_dim is not None:
        allowed = f"[0, {info.input_dim}) (input_dim of the embedding table)"
        if value < 0:
            allowed += "; ONNX Gather would silently wrap a negative id to the end of the table"
    else:
        allowed = f"[{lo}, {hi}] (the graph's {info.dtype} input)"
    raise InvalidInputError(
        f"input {info.name!r}: id {value} at position {position(index)} is outside the allowed range {allowed}"
    )


def prepare(value: Any, info: TensorInfo, single_sequence: bool = False) -> np.ndarray:
    """Validate one input and return it as a C-contiguous array of the graph's dtype.

    The caller's array is returned unchanged when it already is one (no copy).
    """
    if info.dtype.kind not in "iu":
        try:
            array = np.ascontiguousarray(value, dtype=info.dtype)
        except (TypeError, ValueError) as exc:
            raise InputTypeError(f"input {info.name!r}: cannot convert to {info.dtype}: {exc}") from None
    else:
        length = info.input_length
        if isinstance(value, (list, tuple)) and len(value) == 0 and not single_sequence:
            value = np.zeros((0, length or 0), dtype=np.int64)  # an empty batch
        if single_sequence:
            array = as_id_array(value, info.name)
            if array.ndim != 1:
                raise InvalidInputError(
                    f"input {info.name!r}: single_sequence=True expects one 1-D sequence, got rank {array.ndim}"
                )
            if length is not None and 0 < array.shape[0] < length and not isinstance(value, np.ndarray):
                array = pad_ragged([array], info.name, length, info.padding_id is not None)[0]
            array = array[np.newaxis]
        else:
            array = as_id_array(value, info.name, length, info.padding_id is not None)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
    check_shape(array, info)
    if info.dtype.kind in "iu":
        check_range(array, info)
    if array.dtype != info.dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=info.dtype)
    return array


def check_shared_dims(feeds: Mapping[str, np.ndarray], infos: Sequence[TensorInfo]) -> None:
    """Axes that share a symbolic name in the graph (``batch``...) must have one size across inputs."""
    seen: dict[str, tuple[str, int]] = {}
    for info in infos:
        for axis, (dim, size) in enumerate(zip(info.dim_names, feeds[info.name].shape)):
            if dim is None:
                continue
            first = seen.setdefault(dim, (info.name, size))
            if first[1] != size:
                raise InvalidInputError(
                    f"input {info.name!r} has {size} on axis {axis} ({dim!r}) but input {first[0]!r} has "
                    f"{first[1]}; the graph requires the same {dim!r} size for both"
                )


def prepare_all(
    inputs: Any,
    infos: Sequence[TensorInfo],
    single_sequence: bool = False,
    checks: Mapping[str, FastCheck] | None = None,
) -> dict[str, np.ndarray]:
    """Validate every input of the model; a bare array is accepted for single-input models only.

    ``checks`` (one :class:`FastCheck` per input name) speed up plain integer arrays.
    """
    names = [s.name for s in infos]
    if isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            raise InvalidInputError(f"{'; '.join(parts)}; the model's inputs are {', '.join(names)}")
        feeds = {s.name: _prepare_one(inputs[s.name], s, single_sequence, checks) for s in infos}
        check_shared_dims(feeds, infos)
        return feeds
    if len(infos) != 1:
        raise InvalidInputError(
            f"the model has {len(infos)} inputs ({', '.join(names)}); pass a dict mapping each name to its ids"
        )
    info = infos[0]
    return {info.name: _prepare_one(inputs, info, single_sequence, checks)}


def _prepare_one(
    value: Any, info: TensorInfo, single_sequence: bool, checks: Mapping[str, FastCheck] | None
) -> np.ndarray:
    if checks is not None and type(value) is np.ndarray and not single_sequence:
        checked = checks[info.name](value)
        if checked is not None:
            return checked
    return prepare(value, info, single_sequence)
