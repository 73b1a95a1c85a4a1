"""Big tables as ONNX external data (exporters.large), with tables just over a tiny threshold."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters import ExportError, export_keras, large
from exporters.verify import sample_feeds

pytestmark = pytest.mark.tf

TINY = 1024  # bytes: every table in these tests is bigger


def graph_of(path: Path) -> onnx.GraphProto:
    return onnx.load(str(path), load_external_data=False).graph


def external(graph: onnx.GraphProto) -> dict[str, dict[str, str]]:
    """Initializer name -> its external_data entries, for the tables stored outside the .onnx."""
    return {
        i.name: {e.key: e.value for e in i.external_data}
        for i in graph.initializer
        if i.data_location == onnx.TensorProto.EXTERNAL
    }


def shape_of(graph: onnx.GraphProto) -> tuple:
    """What must match the normal path: ops and their wiring, inputs, outputs, initializer shapes."""
    return (
        [(n.op_type, list(n.input), list(n.output)) for n in graph.node],
        [(v.name, str(v.type)) for v in graph.input],
        [(v.name, str(v.type)) for v in graph.output],
        sorted((i.name, tuple(i.dims), i.data_type) for i in graph.initializer),
    )


def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
@pytest.mark.parametrize("mask_zero", [True, False])
def test_big_table_goes_to_external_data_with_the_normal_graph(flavour, mask_zero, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    model = keras.Sequential([keras.layers.Embedding(5000, 8, mask_zero=mask_zero)])
    model.build((None, None))
    big = export_keras(model, tmp_path / "big" / "m.onnx", external_data_threshold=TINY)
    normal = export_keras(model, tmp_path / "normal" / "m.onnx")
    assert normal.external_data is None

    assert big.external_data is not None
    data_name = big.external_data.name  # named after its contents
    assert data_name == f"m.onnx.{hashlib.sha256(big.external_data.read_bytes()).hexdigest()[:16]}.data"
    assert leftovers(tmp_path / "big") == ["m.onnx", data_name]
    assert leftovers(tmp_path / "normal") == ["m.onnx"]
    assert big.external_data == tmp_path / "big" / data_name
    graph = graph_of(tmp_path / "big" / "m.onnx")
    assert shape_of(graph) == shape_of(graph_of(tmp_path / "normal" / "m.onnx"))
    ops = sorted(n.op_type for n in graph.node)
    assert ops == (["Equal", "Gather", "Not"] if mask_zero else ["Gather"])
    refs = external(graph)
    (ref,) = refs.values()
    assert ref["location"] == data_name  # relative: the pair can be moved together
    assert int(ref["offset"]) % large.ALIGNMENT == 0
    assert int(ref["length"]) == 5000 * 8 * 4
    assert big.file_bytes < 4096  # the .onnx holds no table bytes
    assert big.parity is not None and big.parity.worst == 0.0
    assert big.rewrite_max_abs_diff == 0.0

    ids = np.array([[0, 1, 4998, 4999], [17, 2500, 0, 3]], np.int64)
    table = model.layers[0].embeddings.numpy()
    got = run(tmp_path / "big" / "m.onnx", {"input_ids": ids})
    np.testing.assert_array_equal(got[big.outputs[0][0]], table[ids])
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "big", moved)
    shutil.rmtree(tmp_path / "big")
    np.testing.assert_array_equal(run(moved / "m.onnx", {"input_ids": ids})[big.outputs[0][0]], table[ids])


def test_two_big_tables_and_a_small_one(k3, tmp_path):
    """User and item towers above the threshold share one data file; a small table stays inline."""
    user = k3.Input((None,), dtype="int64", name="user_ids")
    item = k3.Input((None,), dtype="int64", name="item_ids")
    ctx = k3.Input((None,), dtype="int64", name="context_ids")
    u = k3.layers.Embedding(3001, 16, name="user_tower", mask_zero=True)(user)
    i = k3.layers.Embedding(2003, 16, name="item_tower", mask_zero=True)(item)
    c = k3.layers.Embedding(10, 16, name="context")(ctx)
    model = k3.Model([user, item, ctx], {"user": u, "item": i, "context": c})
    report = export_keras(model, tmp_path / "towers.onnx", external_data_threshold=10 * 16 * 4)

    graph = graph_of(tmp_path / "towers.onnx")
    refs = external(graph)
    assert sorted(refs) == ["item_tower.embeddings", "user_tower.embeddings"]
    assert report.external_data is not None
    assert {r["location"] for r in refs.values()} == {report.external_data.name}
    assert all(int(r["offset"]) % large.ALIGNMENT == 0 for r in refs.values())
    spans = sorted((int(r["offset"]), int(r["offset"]) + int(r["length"])) for r in refs.values())
    assert spans[0][1] <= spans[1][0]  # no overlap
    assert report.external_data_bytes == spans[1][1]
    inline = {i.name for i in graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL}
    assert "context.embeddings" in inline
    assert sorted(n.op_type for n in graph.node) == [
        "Equal",
        "Equal",
        "Gather",
        "Gather",
        "Gather",
        "Not",
        "Not",
    ]
    assert report.parity is not None and report.parity.worst == 0.0
    assert {o for o, _, _ in report.outputs} >= {"user_tower_mask", "item_tower_mask"}


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_float16_table(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    # int64 ids: without a typed Input, Keras casts ids to the layer's float16 and rounds ids above 2048
    model = keras.Sequential(
        [keras.Input((None,), dtype="int64"), keras.layers.Embedding(4000, 8, dtype="float16")]
    )
    report = export_keras(model, tmp_path / "m.onnx", external_data_threshold=TINY)
    graph = graph_of(tmp_path / "m.onnx")
    (name,) = external(graph)
    table = next(i for i in graph.initializer if i.name == name)
    assert table.data_type == onnx.TensorProto.FLOAT16
    assert report.external_data is not None and os.path.getsize(report.external_data) == 4000 * 8 * 2
    assert report.parity is not None and report.parity.worst == 0.0
    ids = np.array([[1, 3999, 0]], np.int64)
    got = run(tmp_path / "m.onnx", {"input_ids": ids})[report.outputs[0][0]]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, model.layers[0].embeddings.numpy()[ids])


def test_env_var_and_cli_flag(k3, tmp_path, monkeypatch):
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(3000, 8)])
    monkeypatch.setenv(large.THRESHOLD_ENV, "1KiB")
    assert export_keras(model, tmp_path / "env.onnx").external_data is not None
    assert export_keras(model, tmp_path / "arg.onnx", external_data_threshold="off").external_data is None
    monkeypatch.delenv(large.THRESHOLD_ENV)
    model.save(tmp_path / "m.keras")
    from exporters.cli import main

    assert (
        main([str(tmp_path / "m.keras"), "-o", str(tmp_path / "cli.onnx"), "--external-data-threshold", "1K"])
        == 0
    )
    (cli_data,) = tmp_path.glob("cli.onnx.*.data")
    assert cli_data.stat().st_size == 3000 * 8 * 4
    assert (
        main([str(tmp_path / "m.keras"), "-o", str(tmp_path / "x.onnx"), "--external-data-threshold", "lots"])
        == 1
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("where", ["writing rows", "parity"])
def test_nothing_left_behind_on_failure(where, k3, tmp_path, monkeypatch):
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(5000, 8)])
    out = tmp_path / "out"
    if where == "writing rows":
        real = large.iter_rows

        def broken(*args, **kwargs):
            gen = real(*args, chunk_bytes=4096)
            yield next(gen)
            raise OSError("disk full")

        monkeypatch.setattr(large, "iter_rows", broken)
        with pytest.raises(OSError, match="disk full"):
            export_keras(model, out / "m.onnx", external_data_threshold=TINY)
    else:
        import exporters.export as export_module

        def mismatch(*args, **kwargs):
            raise ExportError("output differs")

        monkeypatch.setattr(export_module, "compare", mismatch)
        with pytest.raises(ExportError, match="differs"):
            export_keras(model, out / "m.onnx", external_data_threshold=TINY)
    assert leftovers(out) == []
    assert model.layers[0]._embeddings.shape == (5000, 8)  # the real table is back in the layer


def test_failed_export_keeps_the_previous_pair(k3, tmp_path, monkeypatch):
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(5000, 8)])
    export_keras(model, tmp_path / "m.onnx", external_data_threshold=TINY)
    before = {p: (tmp_path / p).read_bytes() for p in leftovers(tmp_path)}
    monkeypatch.setattr(large, "iter_rows", lambda *a, **k: iter([np.zeros(3, np.float32)]))
    with pytest.raises(ExportError, match="expected"):
        export_keras(model, tmp_path / "m.onnx", external_data_threshold=TINY)
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert leftovers(tmp_path) == sorted(before)


def test_stand_in_row_count_left_in_the_graph_is_refused():
    from onnx import TensorProto, helper, numpy_helper

    class Emb:
        name, shape, dtype, onnx_name = "t", (100000, 4), "float32", "t.embeddings"

    sub = large.StandIn(Emb(), "_embeddings", None, rows=7919)  # type: ignore[arg-type]
    table = numpy_helper.from_array(np.zeros((7919, 4), np.float32), "t.embeddings")
    bound = numpy_helper.from_array(np.array(7918, np.int64), "max_id")
    graph = helper.make_graph(
        [
            helper.make_node("Min", ["ids", "max_id"], ["clipped"]),
            helper.make_node("Gather", ["t.embeddings", "clipped"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[table, bound],
    )
    model = helper.make_model(graph)
    with pytest.raises(ExportError, match="row count"):
        large.check_row_count_gone(model, [sub])
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(99999, np.int64), "max_id"))
    large.check_row_count_gone(model, [sub])


def test_parity_ids_read_the_first_and_last_rows():
    for case, feeds in sample_feeds([("ids", None, 1_000_003)], seed=3):
        ids = feeds["ids"]
        assert (ids == 1_000_002).any(), case
        if "padding=none" not in case and ids.shape[1] > 1:
            assert (ids == 0).any(), case
        assert ((ids != 0).sum(axis=1) > 0).all(), case


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("64MiB", 64 << 20), ("64M", 64 << 20), ("1.5k", 1536), ("2GB", 2 << 30)],
)
def test_parse_size(text, size):
    assert large.parse_size(text) == size


def test_bad_threshold_is_a_clear_error():
    with pytest.raises(ExportError, match="not a size"):
        large.resolve_threshold("big")


SLOW_ROWS, SLOW_DIM = 4_300_000, 128  # 2.2 GB of float32: over protobuf's 2 GB limit


def _free_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


@pytest.mark.slow
@pytest.mark.skipif(_free_ram() < 12 << 30, reason="needs 12 GB of free RAM")
def test_table_over_2gb_for_real(k3, tmp_path):
    if shutil.disk_usage(tmp_path).free < 8 << 30:
        pytest.skip("needs 8 GB of free disk")
    out = tmp_path / "huge.onnx"
    try:
        model = k3.Sequential(
            [
                k3.Input((None,), dtype="int64"),
                k3.layers.Embedding(SLOW_ROWS, SLOW_DIM, embeddings_initializer="zeros"),
            ]
        )
        variable = model.layers[0]._embeddings.value
        rng = np.random.default_rng(0)
        step = 1 << 18
        for start in range(0, SLOW_ROWS, step):
            stop = min(SLOW_ROWS, start + step)
            variable[start:stop].assign(rng.random((stop - start, SLOW_DIM), dtype=np.float32))
        report = export_keras(model, out)  # the default threshold (64 MiB) applies
        assert report.external_data is not None
        assert report.external_data.stat().st_size == SLOW_ROWS * SLOW_DIM * 4
        assert report.parity is not None and report.parity.worst == 0.0
        del model, variable
        probe = (
            "import json, sys, time, psutil, numpy as np, embed_runtime\n"
            "t = time.perf_counter(); rt = embed_runtime.load(sys.argv[1], providers='cpu')\n"
            "seconds = time.perf_counter() - t; rss = psutil.Process().memory_info().rss\n"
            f"out = rt.run(np.array([[1, {SLOW_ROWS - 1}]]))\n"
            "print(json.dumps({'seconds': seconds, 'rss': rss, 'shape': list(next(iter(out.values())).shape)}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, str(out)], capture_output=True, text=True, check=True
        )
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        assert loaded["shape"] == [1, 2, SLOW_DIM]
        assert loaded["rss"] < 300 << 20, loaded  # the 2.2 GB table is memory-mapped, not read
    finally:
        for p in (out, *tmp_path.glob("huge.onnx.*.data")):
            p.unlink(missing_ok=True)


# --- replacing a model (issue 16): content-named data files, the .onnx renamed last, old data unlinked


def small_model(k3, seed: int):
    """Embedding(5000, 8) whose table is ``np.random.default_rng(seed)`` normals: the expected rows are
    known without the exporter."""
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(5000, 8)])
    table = np.random.default_rng(seed).standard_normal((5000, 8)).astype(np.float32)
    model.layers[0].embeddings.assign(table)
    return model, table


def test_reexport_leaves_a_loaded_model_and_its_mapped_file_alone(k3, tmp_path):
    """A runtime holding the old model keeps its results; the file it maps is never truncated or written."""
    import mmap

    import embed_runtime

    path = tmp_path / "m.onnx"
    ids = np.array([[0, 1, 4999], [2500, 17, 3]], np.int64)
    model, first = small_model(k3, seed=1)
    report = export_keras(model, path, external_data_threshold=TINY)
    old, name = report.external_data, report.outputs[0][0]
    rt = embed_runtime.load(path, providers="cpu")
    np.testing.assert_array_equal(rt.run(ids)[name], first[ids])
    with open(old, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        snapshot = bytes(mapped)
        model.layers[0].embeddings.assign(first[::-1].copy())  # other rows, same size
        new = export_keras(model, path, external_data_threshold=TINY).external_data
        assert new is not None and new != old and new.stat().st_ino != os.fstat(f.fileno()).st_ino
        assert os.fstat(f.fileno()).st_nlink == 0  # the old data file was unlinked, not rewritten:
        assert os.fstat(f.fileno()).st_size == len(snapshot) and bytes(mapped) == snapshot
    assert leftovers(tmp_path) == ["m.onnx", new.name]
    np.testing.assert_array_equal(rt.run(ids)[name], first[ids])
    np.testing.assert_array_equal(embed_runtime.load(path, providers="cpu").run(ids)[name], first[::-1][ids])


def test_the_onnx_records_its_data_file(k3, tmp_path):
    model, _ = small_model(k3, seed=2)
    report = export_keras(model, tmp_path / "m.onnx", external_data_threshold=TINY)
    props = {
        p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).metadata_props
    }
    (record,) = json.loads(props["embed_runtime.external_data"])
    data = report.external_data.read_bytes()
    assert record["location"] == report.external_data.name
    assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
