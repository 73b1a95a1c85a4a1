"""Turning what users pass (numpy arrays, lists, ragged lists) into integer id arrays, and the size limit.

Only types and conversions live here: no range checks (those are :mod:`embed_runtime.inputs`). Python
lists go through numpy once; only when numpy cannot read them as a rectangle of integers is each element
looked at, to name the first bad one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .contract import PADDING_ID
from .errors import InputTypeError, InvalidInputError

MAX_IDS = 1 << 28
"""Most ids one input of one call may hold (2 GiB as int64); bigger batches go through ``run_batched``.
Checked from the shape alone, before any id is read or any padded array allocated, so a huge request
(or a zero-stride view that claims 10^12 ids) fails at once instead of exhausting memory or time."""


def position(index: tuple[int, ...]) -> str:
    """``[i, j]``, the way error messages name a place in a batch."""
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def check_size(name: str, shape: tuple[int, ...], what: str = "has shape") -> None:
    """Raise :class:`InvalidInputError` when ``shape`` holds more than :data:`MAX_IDS` ids."""
    total = 1
    for n in shape:
        total *= int(n)
    if total > MAX_IDS:
        raise InvalidInputError(
            f"input {name!r} {what} {tuple(shape)}, {total:,} ids; one call takes at most {MAX_IDS:,} ids "
            "per input: split the batch (run_batched does it in chunks)"
        )


def _from_object_list(value: Any, name: str, array: np.ndarray) -> np.ndarray:
    """``np.asarray`` gave an object array: find the first element that is not an int64-sized integer."""
    for index in np.ndindex(array.shape):
        item = array[index]
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise InputTypeError(
                f"input {name!r}: element at {position(index)} is {item!r} ({type(item).__name__}); "
                "ids must be integers"
            )
        if not -(2**63) <= int(item) < 2**63:
            raise InvalidInputError(
                f"input {name!r}: id {item} at {position(index)} does not fit in 64-bit integers"
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


def pad_ragged(rows: Sequence[Any], name: str, length: int | None, padding: bool) -> np.ndarray:
    """Pad a ragged list of 1-D sequences with PADDING_ID to the longest row (or the fixed ``length``);
    without ``padding`` (id 0 is a real token for this input) every row must already have that length."""
    converted = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
            raise InputTypeError(
                f"input {name!r}: row {i} is {type(row).__name__}, expected a sequence of integer ids"
            )
        arr = as_id_array(row, name, ragged=False)
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
    check_size(name, (len(converted), width), "would be padded to shape")
    out = np.full((len(converted), width), PADDING_ID, dtype=dtype)
    for i, r in enumerate(converted):
        out[i, : len(r)] = r
    return out


def as_id_array(
    value: Any, name: str, length: int | None = None, padding: bool = False, *, ragged: bool = True
) -> np.ndarray:
    """``value`` as an integer numpy array, without range checks; ragged lists are padded with
    PADDING_ID when ``padding`` is allowed (else they are an error). ``ragged=False`` (a row of a ragged
    batch) refuses nested ragged lists instead of padding them, so any nesting depth fails at once.

    Raises :class:`InputTypeError` for floats, bools, strings, objects and :class:`InvalidInputError` for
    integers beyond 64 bits.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError:  # inhomogeneous: a ragged batch
            if not ragged:
                raise InvalidInputError(
                    f"input {name!r}: a row of a ragged batch holds nested sequences; each row must be a "
                    "flat sequence of integer ids"
                ) from None
            return pad_ragged(value, name, length, padding)
        except OverflowError:
            array = np.asarray(value, dtype=object)
        if array.dtype.kind == "f" and array.size:  # ints beyond int64 next to others: numpy made floats
            array = np.asarray(value, dtype=object)
        if array.dtype == object:
            if ragged and array.ndim == 1 and any(isinstance(r, (list, tuple, np.ndarray)) for r in value):
                return pad_ragged(value, name, length, padding)
            array = _from_object_list(value, name, array)
        elif array.size == 0 and array.dtype.kind == "f":  # [] or [[]]
            array = array.astype(np.int64)
        if array.dtype.kind in "iu":
            _reject_bools(value, name)
        if array.ndim == 2 and length is not None and array.shape[1] < length and array.dtype.kind in "iu":
            return pad_ragged(value, name, length, padding)
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
