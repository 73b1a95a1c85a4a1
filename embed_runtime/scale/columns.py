"""Ray Data columns <-> the runtime's terms: the ids of each input, the rows of each output.

Reading (``*_ids``) only reshapes: a list column whose rows all have one length and no nulls becomes one
``(batch, seq)`` integer array without a copy; anything else becomes a list of rows, which
:meth:`Runtime.run <embed_runtime.Runtime.run>` pads, converts and rejects by its own rules. No id is
checked here. Writing (:func:`arrow_rows`) turns an output array into Arrow lists with one schema for
every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Feed = np.ndarray | list[Any]
"""One input's ids for :meth:`~embed_runtime.Runtime.run`: a ``(batch, seq)`` array or a list of rows."""


def arrow_ids(column: pa.ChunkedArray | pa.Array) -> Feed:
    """A ``(batch, seq)`` array (no copy) when every row is a list of one length of integers without
    nulls; a 1-D integer column as ``(batch, 1)``; else a list of rows (numpy arrays, ``None`` for a null
    row) for the runtime to pad or refuse."""
    array = column
    if isinstance(column, pa.ChunkedArray):  # concatenating copies: only when there are several chunks
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    kind = array.type
    if pa.types.is_integer(kind) and array.null_count == 0:
        return array.to_numpy().reshape(-1, 1)
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if listed and len(array) and array.null_count == 0:
        short, long = pc.min_max(pc.list_value_length(array)).values()
        flat = array.flatten()
        if short == long and flat.null_count == 0 and pa.types.is_integer(flat.type):
            return flat.to_numpy().reshape(len(array), long.as_py())
    return list(array.to_numpy(zero_copy_only=False))


def numpy_ids(values: np.ndarray) -> Feed:
    """Ray's numpy batches hold a list column as an object array of per-row arrays: a list of rows."""
    if values.dtype == object:
        return list(values)
    return values.reshape(-1, 1) if values.ndim == 1 and values.dtype.kind in "iu" else values


def pandas_ids(values: pd.Series) -> Feed:
    """A pandas column: Arrow-backed (Ray's default) as :func:`arrow_ids`, else as :func:`numpy_ids`."""
    if isinstance(values.dtype, pd.ArrowDtype):
        return arrow_ids(pa.array(values))
    return numpy_ids(values.to_numpy())


def arrow_rows(values: np.ndarray, shape: tuple[int | None, ...]) -> pa.Array:
    """The rows of one output (``values``, batch first) as an Arrow column, innermost axis first:
    ``fixed_size_list`` where the graph's ``shape`` fixes the axis, ``list`` where it is dynamic, so that
    every batch of a dataset has the same schema whatever its padded length."""
    column = pa.array(values.reshape(-1))
    static = shape[1:] if len(shape) == values.ndim else (None,) * (values.ndim - 1)
    for axis in range(values.ndim - 1, 0, -1):
        size = values.shape[axis]
        if static[axis - 1] is not None:
            column = pa.FixedSizeListArray.from_arrays(column, size)
        else:
            outer = int(np.prod(values.shape[:axis]))
            offsets = pa.array(np.arange(outer + 1, dtype=np.int32) * size)
            column = pa.ListArray.from_arrays(offsets, column)
    return column


def take(feed: Feed, rows: slice | Sequence[int]) -> Feed:
    """Some rows of one input's ids."""
    if isinstance(rows, slice):
        return feed[rows]
    return feed[np.asarray(rows, dtype=np.intp)] if isinstance(feed, np.ndarray) else [feed[i] for i in rows]


def fill_value(dtype: np.dtype[Any]) -> Any:
    """What the outputs of a row routed aside hold: NaN for floats, else 0 (False for bools)."""
    return np.nan if dtype.kind in "fc" else 0


def key_getter(values: Any) -> Callable[[int], Any]:
    """Row ``i`` of a key column as Python shows it: ``1234``, not ``np.int64(1234)`` or a pyarrow
    scalar (``values``: a numpy array, a pandas Series or an Arrow column)."""

    def key(i: int) -> Any:
        value = values.iloc[i] if isinstance(values, pd.Series) else values[i]
        if isinstance(value, pa.Scalar):
            return value.as_py()
        return value.item() if isinstance(value, np.generic) else value

    return key
