"""Fast paths give the same results as the plain path and never hand out a buffer a later call reuses."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import embed_runtime
from embed_runtime import InputTypeError, InvalidInputError, RuntimeOptions

from .conftest import VOCAB, Built


def plain(built: Built) -> embed_runtime.Runtime:
    return embed_runtime.load(built.path, providers="cpu", options=RuntimeOptions(io_binding=False))


def ids_of(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


def local(rt: embed_runtime.Runtime) -> object:
    """This thread's IO-binding state of ``rt`` (its bound shapes and hot entry)."""
    assert rt._binder is not None
    return rt._binder._local


def cache(rt: embed_runtime.Runtime) -> dict[object, Any]:
    return getattr(local(rt), "cache", {})


def test_io_binding_matches_plain_and_never_overwrites_held_results(single: Built) -> None:
    fast = embed_runtime.load(single.path, providers="cpu")
    slow = plain(single)
    held = []
    for seed in range(8):
        ids = ids_of((3, 5), seed)  # same shape every call: bound buffer sets from call 2 on
        out = fast.run(ids)
        ref = slow.run(ids)
        for k in ref:
            np.testing.assert_array_equal(out[k], ref[k])
        held.append((ids, out))
    (bound,) = cache(fast).values()
    assert len(bound.sets) == 3  # all held by this test: later calls fell back to fresh arrays
    for ids, out in held:  # earlier results were not overwritten by later calls
        np.testing.assert_array_equal(out["emb"], single.tables["input_ids"][ids])
        np.testing.assert_array_equal(out["mask"], ids != 0)


def test_io_binding_reuses_released_buffers_only(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    table = single.tables["input_ids"]
    rt.run(ids_of((2, 3), 0))
    first = rt.run(ids_of((2, 3), 1))["emb"]
    address = first.ctypes.data
    del first
    again = rt.run(ids_of((2, 3), 2))
    assert again["emb"].ctypes.data == address  # released, so reused: no copy, no allocation
    view = again["emb"][1]  # a view keeps its base alive and marks the buffers as held
    mask_only = again["mask"]
    del again
    ids = ids_of((2, 3), 3)
    newer = rt.run(ids)
    assert not np.shares_memory(newer["emb"], view) and not np.shares_memory(newer["mask"], mask_only)
    np.testing.assert_array_equal(view, table[ids_of((2, 3), 2)][1])
    np.testing.assert_array_equal(mask_only, ids_of((2, 3), 2) != 0)
    out = None
    for seed in range(10):  # the usual loop keeps the previous result while asking for the next
        ids = ids_of((2, 3), seed)
        out = rt.run(ids)
        np.testing.assert_array_equal(out["emb"], table[ids])
    (bound,) = cache(rt).values()
    assert len(bound.sets) <= 3


def test_io_binding_cache_is_bounded_and_per_output_selection(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu", options=RuntimeOptions(io_binding_cache=2))
    for length in range(1, 6):
        for _ in range(2):
            ids = ids_of((2, length), length)
            np.testing.assert_array_equal(rt.run(ids, outputs=["mask"])["mask"], ids != 0)
            assert list(rt.run(ids, outputs=["mask"])) == ["mask"]
    assert len(cache(rt)) == 2


def test_io_binding_skips_large_outputs(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu", options=RuntimeOptions(io_binding_max_bytes=100))
    ids = ids_of((4, 8), 0)
    for _ in range(2):
        np.testing.assert_array_equal(rt.run(ids)["emb"], single.tables["input_ids"][ids])
    assert len(cache(rt)) == 0


def test_io_binding_counts_the_bound_input_copies(single: Built) -> None:
    """The mask of 4 ids (4 bytes) fits in 35 bytes; with the 32 bytes of its int64 ids the set does not,
    so no buffers are kept for it (many long inputs with tiny outputs held memory before)."""
    ids = ids_of((1, 4), 0)
    for limit, kept in ((4 + ids.nbytes - 1, 0), (4 + ids.nbytes, 1)):
        rt = embed_runtime.load(
            single.path, providers="cpu", options=RuntimeOptions(io_binding_max_bytes=limit)
        )
        for _ in range(2):
            np.testing.assert_array_equal(rt.run(ids, outputs=["mask"])["mask"], ids != 0)
        assert len(cache(rt)) == kept


def test_io_binding_per_thread(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu", threads=1)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(200):
                ids = ids_of((2, 3), seed * 1000 + i)
                out = rt.run(ids)
                np.testing.assert_array_equal(out["emb"], single.tables["input_ids"][ids])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_out_writes_into_caller_arrays(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_of((16, 9), 1)
    emb = np.full((16, 9, 4), np.nan, np.float32)
    mask = np.empty((16, 9), bool)
    result = rt.run(ids, out={"emb": emb, "mask": mask})
    assert result["emb"] is emb and result["mask"] is mask
    np.testing.assert_array_equal(emb, plain(single).run(ids)["emb"])
    np.testing.assert_array_equal(mask, ids != 0)
    # a subset in out=, the rest allocated
    emb2 = np.empty_like(emb)
    result = rt.run(ids, out={"emb": emb2})
    assert result["emb"] is emb2
    np.testing.assert_array_equal(result["mask"], ids != 0)
    # a single array for a single requested output
    only = np.empty_like(emb)
    assert rt.run(ids, out=only, outputs=["emb"])["emb"] is only
    np.testing.assert_array_equal(only, emb)
    # empty batch
    empty = np.empty((0, 9, 4), np.float32)
    assert rt.run(np.zeros((0, 9), np.int64), out={"emb": empty})["emb"] is empty


@pytest.mark.parametrize(
    ("out", "error", "pattern"),
    [
        (np.empty((2, 3, 4), np.float32), InvalidInputError, r"single array but 2 outputs"),
        ({"emb": np.empty((2, 3, 4), np.float64)}, InputTypeError, r"dtype float64; output 'emb' is float32"),
        (
            {"emb": np.empty((2, 4, 4), np.float32)},
            InvalidInputError,
            r"shape \(2, 4, 4\); these inputs give \(2, 3, 4\)",
        ),
        ({"emb": np.empty((2, 3), np.float32)}, InvalidInputError, r"shape \(2, 3\)"),
        ({"emb": np.empty((2, 3, 8), np.float32)[..., ::2]}, InvalidInputError, r"C-contiguous"),
        ({"nope": np.empty(3)}, InvalidInputError, r"'nope', which is not among the requested outputs"),
        ({"emb": [[0.0]]}, InputTypeError, r"must be a numpy array"),
        ([np.empty(3)], InputTypeError, r"numpy array or a dict"),
    ],
)
def test_out_rejected(single: Built, out: object, error: type, pattern: str) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    with pytest.raises(error, match=pattern):
        rt.run(np.ones((2, 3), np.int64), out=out)
    readonly = np.empty((2, 3, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(InvalidInputError, match="writeable"):
        rt.run(np.ones((2, 3), np.int64), out={"emb": readonly})
    assert rt.run([[1, 2, 3]])["mask"].all()


def test_run_batched_matches_single_call(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_of((103, 6), 2)
    stream = rt.run_batched(ids, batch_size=25, progress=False)
    first = next(stream)
    snapshot = first["emb"].copy()  # taken before the later chunks run
    chunks = [first, *stream]
    assert [c["emb"].shape[0] for c in chunks] == [25, 25, 25, 25, 3]
    np.testing.assert_array_equal(np.concatenate([c["emb"] for c in chunks]), single.tables["input_ids"][ids])
    np.testing.assert_array_equal(np.concatenate([c["mask"] for c in chunks]), ids != 0)
    np.testing.assert_array_equal(first["emb"], snapshot)  # chunk 0 not overwritten by chunks 1..4


def test_run_batched_generators_dicts_and_progress(
    models: dict[str, Built], capsys: pytest.CaptureFixture[str]
) -> None:
    single = models["single"]
    rt = embed_runtime.load(single.path, providers="cpu")
    rows = ([1] * (i % 4 + 1) for i in range(10))  # a generator of ragged rows
    chunks = list(rt.run_batched(rows, batch_size=4, progress=True))
    assert [c["mask"].sum() for c in chunks] == [10, 10, 3]
    assert "seq" in capsys.readouterr().err  # the tqdm bar
    assert len(list(rt.run_batched(ids_of((9, 2), 5), batch_size=4))) == 3
    assert capsys.readouterr().err == ""  # no bar unless asked for: a library call stays quiet
    two = embed_runtime.load(models["two"].path, providers="cpu")
    u, i = ids_of((7, 3), 3) % 30, ids_of((7, 3), 4)
    chunks = list(
        two.run_batched({"user_id": u, "item_id": i}, batch_size=3, progress=False, outputs=["item_id_emb"])
    )
    got = np.concatenate([c["item_id_emb"] for c in chunks])
    np.testing.assert_array_equal(got, models["two"].tables["item_id"][i])
    with pytest.raises(InvalidInputError, match="different batch lengths"):
        list(two.run_batched({"user_id": u, "item_id": i[:3]}, progress=False))
    with pytest.raises(InvalidInputError, match=r"id -1 at position \[0, 0\]"):
        list(rt.run_batched(np.full((3, 2), -1), progress=False))


def test_run_batched_without_tqdm(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if tqdm were not installed
    rt = embed_runtime.load(single.path, providers="cpu")
    assert len(list(rt.run_batched(ids_of((5, 2), 0), batch_size=2))) == 3


def test_prepare_is_the_validation_of_run(models: dict[str, Built]) -> None:
    rt = embed_runtime.load(models["int32"].path, providers="cpu")
    ids = np.array([[1, 2], [3, 0]], np.uint8)
    feeds = rt.prepare(ids)
    assert list(feeds) == ["input_ids"] and feeds["input_ids"].dtype == np.int32
    assert feeds["input_ids"].flags.c_contiguous
    assert rt.prepare([[1], [2, 3]])["input_ids"].tolist() == [[1, 0], [2, 3]]
    own = np.array([[4, 5]], np.int32)
    assert rt.prepare(own)["input_ids"] is own  # no copy when already right
    with pytest.raises(InvalidInputError, match="id -1"):
        rt.prepare(np.array([[-1]]))
    two = embed_runtime.load(models["two"].path, providers="cpu")
    assert set(two.prepare({"user_id": [[1]], "item_id": np.array([[2]], np.int16)})) == {
        "user_id",
        "item_id",
    }


@pytest.mark.parametrize("length", [16, 200])  # a Python max below 64 ids, a ufunc reduction above
def test_repeated_shape_hot_path_still_validates_every_call(single: Built, length: int) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    table = single.tables["input_ids"]
    for seed in range(3):  # from the second call on, ids go into a bound buffer and are checked there
        ids = ids_of((1, length), seed)
        np.testing.assert_array_equal(rt.run(ids)["emb"], table[ids])
    assert getattr(local(rt), "hot", None) is not None
    for bad, value in ((-1, -1), (VOCAB, VOCAB), (np.iinfo(np.int64).min, np.iinfo(np.int64).min)):
        ids = ids_of((1, length), 7)
        ids[0, length - 1] = bad
        with pytest.raises(InvalidInputError, match=rf"id {value} at position \[0, {length - 1}\]"):
            rt.run(ids)
    ids = ids_of((1, length), 8)
    held = rt.run(ids)
    np.testing.assert_array_equal(held["emb"], table[ids])  # still serving, and results are right
    np.testing.assert_array_equal(held["mask"], ids != 0)
    other = rt.run(ids_of((1, length), 9))
    assert not np.shares_memory(other["emb"], held["emb"])  # the held result was not reused


def test_hot_path_never_serves_a_model_without_metadata_wrongly(models: dict[str, Built]) -> None:
    built = models["foreign"]  # no input_dim: only the graph's dtype bounds the ids
    rt = embed_runtime.load(built.path, providers="cpu")
    table = built.tables["input_ids"]
    for seed in range(3):
        ids = ids_of((2, 4), seed)
        np.testing.assert_array_equal(rt.run(ids)["emb"], table[ids])


@pytest.mark.parametrize(
    "big", [False, True]
)  # small outputs go through the bound buffers, big ones bind out=
def test_out_on_repeated_calls_small_and_big(single: Built, big: bool) -> None:
    options = RuntimeOptions(io_binding_max_bytes=0 if big else 1 << 20)
    rt = embed_runtime.load(single.path, providers="cpu", options=options)
    table = single.tables["input_ids"]
    emb = np.empty((4, 6, 4), np.float32)
    for seed in range(4):
        ids = ids_of((4, 6), seed)
        result = rt.run(ids, out={"emb": emb})
        assert result["emb"] is emb
        np.testing.assert_array_equal(emb, table[ids])
        np.testing.assert_array_equal(result["mask"], ids != 0)


def test_small_out_with_an_axis_the_graph_does_not_state_is_never_broadcast(tmp_path) -> None:
    """A foreign graph whose output dims are all unknown: a wrong out= shape is an error, not a broadcast."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["f", "shape"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None])],
        initializer=[numpy_helper.from_array(np.array([0, -1, 1], np.int64), "shape")],
    )
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    rt = embed_runtime.load(path, providers="cpu")
    ids = np.arange(8, dtype=np.int64).reshape(2, 4)
    good = np.empty((2, 4, 1), np.float32)
    for _ in range(3):  # the first call runs plainly, the later ones through the bound buffers
        assert rt.run(ids, out=good)["y"] is good
        np.testing.assert_array_equal(good[..., 0], ids)
    for wrong in ((2, 4, 3), (2, 1, 1)):
        with pytest.raises(InvalidInputError, match=r"out\['y'\] has shape"):
            rt.run(ids, out=np.zeros(wrong, np.float32))
