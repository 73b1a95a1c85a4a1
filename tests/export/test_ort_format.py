"""The mobile format (exporters.mobile): ``.ort`` files made with onnxruntime's converter, loaded by the
runtime, and the operators the reduced build needs, as docs/edge.md lists them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import embed_runtime
from exporters import ExportError, export_keras
from exporters.cli import main as embed_export
from exporters.mobile import operators_row, required_operators, to_ort

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODELS = sorted(p.parent.name for p in (ROOT / "models").glob("*/model.onnx"))


def converted(name: str, folder: Path) -> tuple[Path, Path]:
    (folder / name).mkdir()
    model = folder / name / "model.onnx"
    shutil.copy(ROOT / "models" / name / "model.onnx", model)
    return to_ort(model)


def test_ort_file_runs_the_golden_ids(tmp_path):
    ort_path, config = converted("seed", tmp_path)
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffer identifier
    assert required_operators(config) == {"ai.onnx;1": ["Gather"]}
    with np.load(ROOT / "models" / "seed" / "golden.npz") as golden:
        feeds = {k.removeprefix("input."): golden[k] for k in golden.files if k.startswith("input.")}
        want = {k.removeprefix("output."): golden[k] for k in golden.files if k.startswith("output.")}
    rt = embed_runtime.load(ort_path)
    assert rt.metadata.embeddings[0].input_dim == 1000  # the contract's metadata survives the conversion
    got = rt.run(feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-6)


def test_docs_list_the_operators_of_every_reference_model(tmp_path):
    doc = (ROOT / "docs" / "edge.md").read_text()
    for name in REFERENCE_MODELS:
        row = operators_row(name, converted(name, tmp_path)[1])
        assert row in doc, f"docs/edge.md is stale for {name}; its row is now:\n{row}"


def test_required_operators_reads_type_reduced_entries(tmp_path):
    config = tmp_path / "x.config"
    config.write_text(
        '# comment\nai.onnx;13;Gather{"inputs": {"0": ["float"]}},Cast\ncom.microsoft;1;FusedGemm\n'
    )
    assert required_operators(config) == {"ai.onnx;13": ["Cast", "Gather"], "com.microsoft;1": ["FusedGemm"]}


@pytest.mark.tf
def test_cli_writes_an_int8_ort_file(k3, tmp_path, capsys):
    inp = k3.Input((None,), dtype="int64", name="ids")
    model = k3.Model(inp, k3.layers.Embedding(300, 8, mask_zero=True, name="emb")(inp))
    model.save(tmp_path / "m.keras")
    args = [
        str(tmp_path / "m.keras"),
        "-o",
        str(tmp_path / "m.onnx"),
        "--table-dtype",
        "int8",
        "--format",
        "ort",
    ]
    assert embed_export(args) == 0
    assert "converted to" in capsys.readouterr().out
    ids = np.array([[1, 299, 0], [5, 6, 7]], np.int64)
    from_ort = embed_runtime.load(tmp_path / "m.ort").run({"ids": ids})
    from_onnx = embed_runtime.load(tmp_path / "m.onnx").run({"ids": ids})
    for name, values in from_onnx.items():
        np.testing.assert_array_equal(from_ort[name], values)
    assert embed_runtime.load(tmp_path / "m.ort").metadata.embeddings[0].table_dtype == "int8"
    ops = required_operators(tmp_path / "m.required_operators.config")
    assert "Gather" in ops["ai.onnx;1"] and "Mul" in ops["ai.onnx;7"]


@pytest.mark.tf
def test_external_data_is_refused(k3, tmp_path):
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(5000, 8)])
    export_keras(model, tmp_path / "m.onnx", external_data_threshold=1024)
    with pytest.raises(ExportError, match="external data file, which the ORT format cannot reference"):
        to_ort(tmp_path / "m.onnx")
