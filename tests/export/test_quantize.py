"""Compact tables (``table_dtype`` float16 / int8, exporters.quantize) and Keras 3 int8-quantized models.

The expected rows are computed here from the Keras table with numpy (per-row symmetric int8: scale =
max|row| / 127, q = round(row / scale)), not with the exporter's quantizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import embed_runtime
from embed_runtime.contract import EmbeddingInfo
from exporters import ExportError, export_keras
from exporters.cli import main as embed_export

pytestmark = pytest.mark.tf

IDS = np.array([[0, 1, 4998, 4999], [17, 2500, 3, 3]], np.int64)


def trained_ish(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows with norms spread over two orders of magnitude and a few outlier rows, like a
    trained table (frequent ids get big rows)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, width)) * rng.lognormal(-2.0, 1.0, size=(rows, 1))
    table[rng.integers(0, rows, 5)] *= 50.0
    return table.astype(np.float32)


def embedding_model(keras, table: np.ndarray, mask_zero: bool = False):
    inp = keras.Input((None,), dtype="int64", name="ids")
    layer = keras.layers.Embedding(*table.shape, mask_zero=mask_zero, name="emb")
    rows = layer(inp)
    pooled = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(rows))
    model = keras.Model(inp, {"rows": rows, "head": pooled})
    layer.set_weights([table])
    return model


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized table, per-row scale) of per-row symmetric int8."""
    scale = (np.abs(table).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    return q.astype(np.float32) * scale, scale


def lookup_ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def total_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return trained_ish(5000, 64)


@pytest.fixture(scope="module")
def model(k3, table):
    return embedding_model(k3, table)


@pytest.mark.parametrize("external", [False, True])
def test_int8_rows_are_the_per_row_quantized_table(model, table, external, tmp_path):
    threshold = 1024 if external else None
    report = export_keras(model, tmp_path / "m.onnx", table_dtype="int8", external_data_threshold=threshold)
    assert (report.external_data is not None) == external
    assert lookup_ops(tmp_path / "m.onnx")[:4] == ["Gather", "Cast", "Gather", "Mul"]
    rt = embed_runtime.load(tmp_path / "m.onnx")
    (info,) = rt.metadata.embeddings
    assert (info.dtype, info.table_dtype, info.quantization) == ("float32", "int8", "per_row_scale")
    got = rt.run({"ids": IDS})
    deq, scale = int8_rows(table)
    np.testing.assert_allclose(got["rows"], deq[IDS], rtol=0, atol=1e-7)
    assert np.all(np.abs(got["rows"] - table[IDS]) <= scale[IDS] / 2 * (1 + 1e-5))
    assert report.rewrite_max_abs_diff == 0.0
    assert report.parity is not None and report.parity.exact_max_abs_diff is not None
    assert report.parity.exact_max_abs_diff <= 1e-6  # the graph vs Keras holding the dequantized table
    (error,) = report.parity.tables
    assert error.rows == 5000 and error.worst_cosine >= 0.999
    assert error.max_abs_error == pytest.approx(float(np.abs(deq - table).max()), rel=1e-6)
    assert 0 < report.parity.max_abs_diff["rows"] <= error.max_abs_error  # vs the original Keras model


def test_float16_rows_and_sizes(model, table, tmp_path):
    sizes = {}
    for dtype in ("float32", "float16", "int8"):
        export_keras(model, tmp_path / dtype / "m.onnx", table_dtype=dtype)
        sizes[dtype] = total_bytes(tmp_path / dtype / "m.onnx")
    assert sizes["float16"] <= 0.52 * sizes["float32"]
    assert sizes["int8"] <= 0.27 * sizes["float32"]
    assert lookup_ops(tmp_path / "float16" / "m.onnx")[:2] == ["Gather", "Cast"]
    rt = embed_runtime.load(tmp_path / "float16" / "m.onnx")
    assert rt.metadata.embeddings[0].table_dtype == "float16"
    got = rt.run({"ids": IDS})
    assert got["rows"].dtype == np.float32
    np.testing.assert_array_equal(got["rows"], table.astype(np.float16).astype(np.float32)[IDS])


def test_float16_overflow_fails_the_export(k3, tmp_path):
    table = np.ones((10, 4), np.float32)
    table[7, 2] = 1e5  # beyond float16's 65504
    with pytest.raises(ExportError, match=r"row 7 .*float16 holds values up to 65504"):
        export_keras(embedding_model(k3, table), tmp_path / "m.onnx", table_dtype="float16")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_table_dtype_is_refused(model, tmp_path):
    with pytest.raises(ExportError, match="table_dtype must be one of float32, float16, int8, not 'int4'"):
        export_keras(model, tmp_path / "m.onnx", table_dtype="int4")


def test_float32_metadata_keeps_the_old_keys():
    old = {"layer": "e", "inputs": ["ids"], "input_dim": 3, "output_dim": 2, "mask_zero": False}
    info = EmbeddingInfo.from_dict(old)
    assert (info.table_dtype, info.quantization) == ("float32", None)
    assert "table_dtype" not in info.to_dict() and "quantization" not in info.to_dict()
    int8 = EmbeddingInfo.from_dict({**old, "table_dtype": "int8", "quantization": "per_row_scale"})
    assert EmbeddingInfo.from_dict(json.loads(json.dumps(int8.to_dict()))) == int8


def test_cli_table_dtype(model, tmp_path, capsys):
    saved = tmp_path / "m.keras"
    model.save(saved)
    assert embed_export([str(saved), "-o", str(tmp_path / "m.onnx"), "--table-dtype", "int8"]) == 0
    out = capsys.readouterr().out
    assert out.count("table emb as int8: 5000 rows") == 1, out  # the report's lines, each printed once
    assert out.count("dequantized tables: max |diff|") == 1, out
    assert embed_runtime.load(tmp_path / "m.onnx").metadata.embeddings[0].table_dtype == "int8"


@pytest.mark.parametrize("mask_zero", [False, True])
def test_keras_int8_model_exports_the_minimal_lookup(k3, table, mask_zero, tmp_path):
    model = embedding_model(k3, table[:1000], mask_zero=mask_zero)
    model.quantize("int8")
    layer = model.get_layer("emb")
    report = export_keras(model, tmp_path / "m.onnx", atol=1e-6)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    div = producers["rows"]
    cast, scale_gather = producers[div.input[0]], producers[div.input[1]]
    table_gather = producers[cast.input[0]]
    assert [n.op_type for n in (table_gather, cast, scale_gather, div)] == ["Gather", "Cast", "Gather", "Div"]
    assert table_gather.input[1] == scale_gather.input[1] == "ids"  # no index arithmetic left
    (info,) = embed_runtime.load(tmp_path / "m.onnx").metadata.embeddings
    assert (info.table_dtype, info.quantization) == ("int8", "per_row_inverse_scale")
    assert report.parity is not None and report.parity.max_abs_diff["rows"] <= 1e-6
    got = embed_runtime.load(tmp_path / "m.onnx").run({"ids": IDS % 1000})
    q = np.asarray(layer._embeddings.numpy())
    keras_scale = np.asarray(layer.embeddings_scale.numpy())
    np.testing.assert_array_equal(
        got["rows"], q[IDS % 1000].astype(np.float32) / keras_scale[IDS % 1000, None]
    )
    np.testing.assert_allclose(got["head"], model({"ids": IDS % 1000})["head"], rtol=0, atol=1e-6)


def test_a_table_copied_into_a_tied_projection_is_refused(k3, tmp_path):
    """tf2onnx folds ``transpose(table)`` into a float constant that the quantized table cannot replace."""
    ids = k3.Input((None,), dtype="int64", name="ids")
    emb = k3.layers.Embedding(200, 8, name="shared")

    class Tied(k3.layers.Layer):
        def call(self, x):
            return k3.ops.matmul(x, k3.ops.transpose(emb.embeddings))

    model = k3.Model(ids, Tied(name="tied")(emb(ids)))
    with pytest.raises(ExportError, match=r"tied output projection.*table_dtype='float32'"):
        export_keras(model, tmp_path / "m.onnx", table_dtype="int8")
    export_keras(model, tmp_path / "m.onnx", table_dtype="float32")
