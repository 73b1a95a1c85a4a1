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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .contract import PADDING_ID
from .errors import InputTypeError, InvalidInputError


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the graph name.
        dtype: numpy dtype of the tensor (``object`` for non-tensor types).
        shape: one entry per axis: an int when static, ``None`` when dynamic.
        input_dim: for id inputs of an exported model, valid ids are ``0 <= id < input_dim``.
        input_length: the static sequence length (axis 1) of an input, when the model fixes it.
        dim_names: the graph's symbolic name of each dynamic axis (``None`` for static or unnamed axes).
        padding_id: for id inputs that only ``mask_zero`` Embeddings read, the id that pads ragged rows
            (the mask output marks those positions); ``None`` where id 0 is a real token, and then rows
            must all have the same (fixed) length.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]
    input_dim: int | None = None
    input_length: int | None = None
    dim_names: tuple[str | None, ...] = ()
    padding_id: int | None = None


def _position(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _first(bad: np.ndarray) -> tuple[int, ...]:
    """Index of the first true element of a bool array (C order)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def _int_limits(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _from_object_list(value: Any, name: str, array: np.ndarray) -> np.ndarray:
    """``np.asarray`` gave an object array: find the first element that is not an int64-sized integer."""
    for index in np.ndindex(array.shape):
        item = array[index]
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise InputTypeError(
                f"input {name!r}: element at {_position(index)} is {item!r} ({type(item).__name__}); "
                "ids must be integers"
            )
        if not -(2**63) <= int(item) < 2**63:
            raise InvalidInputError(
                f"input {name!r}: id {item} at {_position(index)} does not fit in 64-bit integers"
            )
    return np.asarray(value, dtype=np.int64)


def _reject_bools(value: Sequence[Any], name: str) -> None:
    """numpy reads ``[1, True]`` as ``[1, 1]``; a bool among list ids is a type error like a bool array."""
    for i, row in enumerate(value):
        items = row if isinstance(row, (list, tuple)) else (row,)
        for j, item in enumerate(items):
            if isinstance(item, (bool, np.bool_)):
                where = f"[{i}, {j}]" if items is row else f"[{i}]"
                raise InputTypeError(
                    f"input {name!r}: element at {where} is {item!r}; ids must be integers, not bool"
                )


def _pad_ragged(rows: Sequence[Any], name: str, length: int | None, padding: bool) -> np.ndarray:
    """Pad a ragged list of 1-D sequences with PADDING_ID to the longest row (or the fixed ``length``);
    without ``padding`` (id 0 is a real token for this input) every row must already have that length."""
    converted = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
            raise InputTypeError(
                f"input {name!r}: row {i} is {type(row).__name__}, expected a sequence of integer ids"
            )
        arr = as_id_array(row, name)
        if arr.ndim != 1:
            raise InvalidInputError(
                f"input {name!r}: row {i} has rank {arr.ndim}; a ragged batch needs 1-D sequences of ids"
            )
        converted.append(arr)
    longest = max((len(r) for r in converted), default=0)
    width = longest if length is None else length
    if longest > width:
        i = next(i for i, r in enumerate(converted) if len(r) > width)
        raise InvalidInputError(
            f"input {name!r}: row {i} has {len(converted[i])} ids but the model's fixed input_length is {width}"
        )
    short = next((i for i, r in enumerate(converted) if len(r) < width), None)
    if short is not None and not padding:
        target = "the model's fixed input_length" if length is not None else "the longest row"
        raise InvalidInputError(
            f"input {name!r}: row {short} has {len(converted[short])} ids but {target} is {width}; this input "
            "has no mask_zero Embedding, so id 0 is a real token and the runtime will not pad: pad the rows "
            "yourself to one length"
        )
    dtype = np.result_type(*converted) if converted else np.dtype(np.int64)
    if dtype.kind not in "iu":  # uint64 mixed with signed rows: numpy would pick float64
        dtype = np.dtype(np.int64)
        for i, r in enumerate(converted):
            if r.dtype == np.uint64 and r.size and int(r.max()) > np.iinfo(np.int64).max:
                raise InvalidInputError(f"input {name!r}: row {i} has an id beyond the 64-bit signed range")
    out = np.full((len(converted), width), PADDING_ID, dtype=dtype)
    for i, r in enumerate(converted):
        out[i, : len(r)] = r
    return out


def as_id_array(value: Any, name: str, length: int | None = None, padding: bool = False) -> np.ndarray:
    """``value`` as an integer numpy array, without range checks; ragged lists are padded with
    PADDING_ID when ``padding`` is allowed (else they are an error).

    Raises :class:`InputTypeError` for floats, bools, strings, objects and :class:`InvalidInputError` for
    integers beyond 64 bits.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError:  # inhomogeneous: a ragged batch
            return _pad_ragged(value, name, length, padding)
        except OverflowError:
            array = np.asarray(value, dtype=object)
        if array.dtype == object:
            if array.ndim == 1 and any(isinstance(r, (list, tuple, np.ndarray)) for r in value):
                return _pad_ragged(value, name, length, padding)
            array = _from_object_list(value, name, array)
        elif array.size == 0 and array.dtype.kind == "f":  # [] or [[]]
            array = array.astype(np.int64)
        if array.dtype.kind in "iu":
            _reject_bools(value, name)
        if array.ndim == 2 and length is not None and array.shape[1] < length and array.dtype.kind in "iu":
            return _pad_ragged(value, name, length, padding)
    elif isinstance(value, (str, bytes, dict, set)) or value is None:
        raise InputTypeError(f"input {name!r} is {type(value).__name__}; expected an array of integer ids")
    else:
        try:
            array = np.asarray(value)
        except Exception as exc:
            raise InputTypeError(
                f"input {name!r}: cannot read {type(value).__name__} as ids: {exc}"
            ) from None
    kind = array.dtype.kind
    if kind in "iu":
        return array
    if kind == "b":
        raise InputTypeError(f"input {name!r} has dtype bool; ids must be integers")
    if kind in "fc":
        nan = " (it contains NaN)" if kind == "f" and array.size and np.isnan(array).any() else ""
        raise InputTypeError(f"input {name!r} has dtype {array.dtype}{nan}; ids must be integers")
    raise InputTypeError(f"input {name!r} has dtype {array.dtype}; ids must be integers")


def check_shape(array: np.ndarray, spec: TensorSpec) -> None:
    """Raise :class:`InvalidInputError` when ``array`` has the wrong rank or a wrong static axis length."""
    rank = len(spec.shape)
    if array.ndim != rank:
        expected = "(batch, seq)" if rank == 2 else f"rank {rank}"
        hint = "; pass single_sequence=True for one 1-D sequence" if array.ndim == 1 and rank == 2 else ""
        raise InvalidInputError(
            f"input {spec.name!r} has rank {array.ndim} (shape {array.shape}) but the model expects rank "
            f"{rank} {expected}{hint}"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if want is not None and got != want:
            what = "sequence length" if axis == 1 else f"axis {axis} length"
            fixed = "input_length" if axis == 1 else f"axis {axis} length"
            raise InvalidInputError(
                f"input {spec.name!r} has {what} {got} (shape {array.shape}) but the model's fixed "
                f"{fixed} is {want}"
            )


max_reduce = np.maximum.reduce
"""``ndarray.max()`` without its Python wrapper: about 0.3 us less per call on the hot path."""


@dataclass(frozen=True)
class RangePlan:
    """How to check ids of one source dtype against one input: ``view`` the ids as this unsigned dtype
    (``None``: as they are) and compare the ``max`` with ``limit``; ``minmax`` compares both ends with
    ``[lo, hi]``; ``skip`` when the source dtype cannot hold a bad value."""

    lo: int
    hi: int
    skip: bool
    minmax: bool
    view: np.dtype[Any] | None
    limit: int


@lru_cache(maxsize=256)
def range_plan(src: np.dtype[Any], spec: TensorSpec) -> RangePlan:
    """The cheapest check of ``src``-typed ids for ``spec``: one reduction when ``input_dim`` is known."""
    lo_dt, hi_dt = _int_limits(spec.dtype)
    src_lo, src_hi = _int_limits(src)
    lo = 0 if spec.input_dim is not None else lo_dt
    hi = hi_dt if spec.input_dim is None else min(hi_dt, spec.input_dim - 1)  # inclusive
    skip = src_lo >= lo and src_hi <= hi
    if lo == 0 and src_lo < 0:  # negatives viewed as unsigned are > src_hi
        return RangePlan(lo, hi, skip, False, np.dtype(f"u{src.itemsize}"), min(hi, src_hi))
    return RangePlan(lo, hi, skip, lo != 0, None, hi)


def check_range(array: np.ndarray, spec: TensorSpec, plan: RangePlan | None = None) -> None:
    """Raise :class:`InvalidInputError` unless every id fits ``spec`` (``[0, input_dim)`` and the graph dtype).

    Happy path: one ``max`` over an unsigned view of the ids (negatives become huge); zero or one pass.
    """
    plan = plan or range_plan(array.dtype, spec)
    if plan.skip or array.size == 0:
        return
    if plan.minmax:
        if int(array.min()) >= plan.lo and int(array.max()) <= plan.hi:
            return
    elif int((array if plan.view is None else array.view(plan.view)).max()) <= plan.limit:
        return
    _raise_range(array, spec, plan.lo, plan.hi)


class FastCheck:
    """The hot path of :func:`prepare` for a native-endian integer ndarray of the right rank: dtype plans
    are computed once, then a call costs one reduction and a few attribute reads. Returns ``None`` when
    the array needs the general path (wrong rank, lengths, dtype kind), which then raises or converts."""

    def __init__(self, spec: TensorSpec):
        self.spec = spec
        self.name = spec.name
        self.rank = len(spec.shape)
        self.static = tuple((axis, n) for axis, n in enumerate(spec.shape) if n is not None)
        self.plans: dict[np.dtype[Any], RangePlan] = {}
        if spec.dtype.kind in "iu":
            for kind in "iu":
                for size in (1, 2, 4, 8):
                    dtype = np.dtype(f"{kind}{size}")
                    self.plans[dtype] = range_plan(dtype, spec)

    def __call__(self, array: np.ndarray) -> np.ndarray | None:
        """``array`` validated and in the graph's dtype, or ``None`` for the general path."""
        plan = self.plans.get(array.dtype)
        if plan is None or array.ndim != self.rank:
            return None
        shape = array.shape
        for axis, n in self.static:
            if shape[axis] != n:
                return None
        if plan.skip or not array.size:
            pass
        elif plan.minmax or plan.view is None:
            check_range(array, self.spec, plan)
        elif int(max_reduce(array.view(plan.view), None)) > plan.limit:
            _raise_range(array, self.spec, plan.lo, plan.hi)
        if array.dtype != self.spec.dtype or not array.flags.c_contiguous:
            return np.ascontiguousarray(array, dtype=self.spec.dtype)
        return array


def _raise_range(array: np.ndarray, spec: TensorSpec, lo: int, hi: int) -> None:
    """Locate the first id outside ``[lo, hi]`` and raise."""
    index = _first((array < lo) | (array > hi))
    value = int(array[index])
    if spec.input_dim is not None:
        allowed = f"[0, {spec.input_dim}) (input_dim of the embedding table)"
        if value < 0:
            allowed += "; ONNX Gather would silently wrap a negative id to the end of the table"
    else:
        allowed = f"[{lo}, {hi}] (the graph's {spec.dtype} input)"
    raise InvalidInputError(
        f"input {spec.name!r}: id {value} at position {_position(index)} is outside the allowed range {allowed}"
    )


def prepare(value: Any, spec: TensorSpec, single_sequence: bool = False) -> np.ndarray:
    """Validate one input and return it as a C-contiguous array of the graph's dtype.

    The caller's array is returned unchanged when it already is one (no copy).
    """
    if spec.dtype.kind not in "iu":
        try:
            array = np.ascontiguousarray(value, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise InputTypeError(f"input {spec.name!r}: cannot convert to {spec.dtype}: {exc}") from None
    else:
        length = spec.input_length
        if isinstance(value, (list, tuple)) and len(value) == 0 and not single_sequence:
            value = np.zeros((0, length or 0), dtype=np.int64)  # an empty batch
        if single_sequence:
            array = as_id_array(value, spec.name)
            if array.ndim != 1:
                raise InvalidInputError(
                    f"input {spec.name!r}: single_sequence=True expects one 1-D sequence, got rank {array.ndim}"
                )
            if length is not None and 0 < array.shape[0] < length and not isinstance(value, np.ndarray):
                array = _pad_ragged([array], spec.name, length, spec.padding_id is not None)[0]
            array = array[np.newaxis]
        else:
            array = as_id_array(value, spec.name, length, spec.padding_id is not None)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
    check_shape(array, spec)
    if spec.dtype.kind in "iu":
        check_range(array, spec)
    if array.dtype != spec.dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=spec.dtype)
    return array


def check_shared_dims(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> None:
    """Axes that share a symbolic name in the graph (``batch``...) must have one size across inputs."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in specs:
        for axis, (dim, size) in enumerate(zip(spec.dim_names, feeds[spec.name].shape)):
            if dim is None:
                continue
            first = seen.setdefault(dim, (spec.name, size))
            if first[1] != size:
                raise InvalidInputError(
                    f"input {spec.name!r} has {size} on axis {axis} ({dim!r}) but input {first[0]!r} has "
                    f"{first[1]}; the graph requires the same {dim!r} size for both"
                )


def prepare_all(
    inputs: Any,
    specs: Sequence[TensorSpec],
    single_sequence: bool = False,
    checks: Mapping[str, FastCheck] | None = None,
) -> dict[str, np.ndarray]:
    """Validate every input of the model; a bare array is accepted for single-input models only.

    ``checks`` (one :class:`FastCheck` per input name) speed up plain integer arrays.
    """
    names = [s.name for s in specs]
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
        feeds = {s.name: _prepare_one(inputs[s.name], s, single_sequence, checks) for s in specs}
        check_shared_dims(feeds, specs)
        return feeds
    if len(specs) != 1:
        raise InvalidInputError(
            f"the model has {len(specs)} inputs ({', '.join(names)}); pass a dict mapping each name to its ids"
        )
    spec = specs[0]
    return {spec.name: _prepare_one(inputs, spec, single_sequence, checks)}


def _prepare_one(
    value: Any, spec: TensorSpec, single_sequence: bool, checks: Mapping[str, FastCheck] | None
) -> np.ndarray:
    if checks is not None and type(value) is np.ndarray and not single_sequence:
        checked = checks[spec.name](value)
        if checked is not None:
            return checked
    return prepare(value, spec, single_sequence)
