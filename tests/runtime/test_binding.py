"""The IO-binding fast path: the one call into onnxruntime's private attributes, and the one id check that
the general path, FastCheck and the bound-buffer hot path share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

import embed_runtime
from embed_runtime import binding
from embed_runtime.inputs import ARGMAX_IDS, SMALL_BATCH_IDS, RangePlan, range_plan
from embed_runtime.tensors import TensorInfo

from .conftest import VOCAB, Built


def run_four_times(built: Built) -> None:
    """Four calls of one shape (the first plain, the others through bound buffers), checked against the
    table the model looks ids up in."""
    rt = embed_runtime.load(built.path, providers="cpu")
    for seed in range(4):
        ids = np.random.default_rng(seed).integers(0, VOCAB, (2, 5))
        out = rt.run(ids)
        np.testing.assert_array_equal(out["emb"], built.tables["input_ids"][ids])
        np.testing.assert_array_equal(out["mask"], ids != 0)


def test_the_private_onnxruntime_call_is_taken(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """If this fails, this onnxruntime renamed ``InferenceSession._sess`` or ``IOBinding._iobinding``: the
    runtime still works through the public API (next test) but every small call is a few microseconds
    slower. Update :func:`embed_runtime.binding.private_run_with_iobinding`."""
    taken: list[int] = []
    real = binding.private_run_with_iobinding

    def counting(sess: ort.InferenceSession, io: ort.IOBinding) -> Callable[[], None]:
        run = real(sess, io)
        assert run is not None, f"onnxruntime {ort.__version__} no longer offers the private fast call"

        def counted() -> None:
            taken.append(1)
            run()

        return counted

    monkeypatch.setattr(binding, "private_run_with_iobinding", counting)
    run_four_times(single)
    assert len(taken) == 3


def test_without_the_private_call_the_public_api_gives_the_same_results(
    single: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    public: list[int] = []
    real = ort.InferenceSession.run_with_iobinding

    def counting(self: ort.InferenceSession, io: ort.IOBinding, run_options: object = None) -> None:
        public.append(1)
        real(self, io, run_options)

    monkeypatch.setattr(binding, "private_run_with_iobinding", lambda sess, io: None)
    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", counting)
    run_four_times(single)
    assert len(public) == 3


def test_objects_without_the_private_attributes_get_no_private_call() -> None:
    assert binding.private_run_with_iobinding(object(), object()) is None


def test_every_path_runs_the_one_id_check(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = RangePlan.check

    def counting(self: RangePlan, ids: np.ndarray) -> bool:
        calls.append(ids.ndim)
        return real(self, ids)

    monkeypatch.setattr(RangePlan, "check", counting)
    rt = embed_runtime.load(single.path, providers="cpu")
    rt.run([[1, 2, 3]])  # a list: the general path (and buffers are bound for this shape)
    rt.run(np.array([[1, 2, 3]]))  # an array: FastCheck, then the bound buffers
    rt.run(np.array([[4, 5, 6]]))  # the same shape again: the hot path checks the copied ids
    assert calls == [2, 2, 1]  # the hot path checks a flat view of its bound buffer
    with pytest.raises(embed_runtime.InvalidInputError, match=r"id 50 at position \[0, 1\]"):
        rt.run(np.array([[4, VOCAB, 6]]))


INT_DTYPES = [np.dtype(f"{kind}{size}") for kind in "iu" for size in (1, 2, 4, 8)]


def valid(value: int, graph: np.dtype, input_dim: int | None) -> bool:
    """The rule, from its definition: fits the graph's dtype, and ``[0, input_dim)`` when that is known."""
    info = np.iinfo(graph)
    return info.min <= value <= info.max and (input_dim is None or 0 <= value < input_dim)


@pytest.mark.parametrize("src", INT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("graph", "input_dim"),
    [(np.dtype(np.int64), VOCAB), (np.dtype(np.int32), None), (np.dtype(np.int64), None)],
)
def test_range_check_on_every_size_tier(src: np.dtype, graph: np.dtype, input_dim: int | None) -> None:
    """One bad id planted among good ones, for batches small enough for Python's max, for argmax and for
    the ufunc reduction, contiguous or not."""
    plan = range_plan(src, TensorInfo("ids", graph, (None, None), input_dim))
    lo, hi = np.iinfo(src).min, np.iinfo(src).max
    candidates = {
        lo,
        hi,
        -1,
        0,
        1,
        VOCAB - 1,
        VOCAB,
        int(np.iinfo(np.int32).max) + 1,
        np.iinfo(np.int32).min - 1,
    }
    rng = np.random.default_rng(0)
    for size in (SMALL_BATCH_IDS, SMALL_BATCH_IDS + 1, ARGMAX_IDS, ARGMAX_IDS + 1):
        for value in sorted(v for v in candidates if lo <= v <= hi):
            ids = np.ones((2, size), dtype=src)
            position = int(rng.integers(0, size))
            ids[1, position] = value
            strided = np.ones((2, 2 * size), dtype=src)
            strided[1, 2 * position] = value
            for layout in (ids, ids[1], strided[:, ::2]):
                assert plan.check(plan.view_ids(layout)) == valid(value, graph, input_dim), (size, value)
