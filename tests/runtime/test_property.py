"""Property: for any id array the runtime returns exactly ``table[ids]`` and ``ids != 0``, or raises the
package's own error; never anything else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import embed_runtime
from embed_runtime import EmbedRuntimeError

from .conftest import VOCAB, Built

DTYPES = st.sampled_from(
    [
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float32,
        np.float64,
        np.bool_,
    ]
)


@st.composite
def id_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = st.one_of(
            st.integers(0, VOCAB - 1),
            st.integers(int(info.min), int(info.max)),
            st.sampled_from(
                [v for v in (-1, 0, VOCAB - 1, VOCAB, 2**63 - 1, 2**64 - 1) if info.min <= v <= info.max]
            ),
        )
        return draw(hnp.arrays(dtype, shape, elements=values))
    return draw(hnp.arrays(dtype, shape))  # floats include NaN and infinities


def valid(ids: np.ndarray) -> bool:
    return (
        ids.dtype.kind in "iu"
        and ids.ndim == 2
        and (ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < VOCAB))
    )


@pytest.fixture(scope="module")
def rts(models: dict[str, Built]) -> list[embed_runtime.Runtime]:
    return [
        embed_runtime.load(models["single"].path, providers="cpu"),
        embed_runtime.load(models["int32"].path, providers="cpu"),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=id_arrays(), as_list=st.booleans(), pick=st.integers(0, 1))
def test_matches_table_or_raises_own_error(
    rts: list[embed_runtime.Runtime], models: dict[str, Built], ids: np.ndarray, as_list: bool, pick: int
) -> None:
    rt = rts[pick]
    table = models["single"].tables["input_ids"]
    given_value: object = ids
    if as_list and ids.ndim == 2:
        given_value = ids.tolist()
        if ids.size == 0:  # [] and [[], []] hold no values: valid ids whatever the array's dtype
            ids = np.zeros(ids.shape if ids.shape[0] else (0, 0), np.int64)
    try:
        out = rt.run(given_value)
    except EmbedRuntimeError:
        assert not valid(ids)
        return
    assert valid(ids)
    expected = ids.astype(np.int64)
    np.testing.assert_array_equal(out["emb"], table[expected])
    assert out["emb"].dtype == np.float32 and out["emb"].shape == (*ids.shape, table.shape[1])
    np.testing.assert_array_equal(out["mask"], expected != 0)
    assert out["mask"].dtype == np.bool_
