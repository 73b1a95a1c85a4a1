"""The export pipeline: the pass list is the one place a rewrite goes, and the report says what was checked."""

from __future__ import annotations

import onnx
import pytest

from exporters import ExportError, export_keras

pytestmark = pytest.mark.tf


def test_a_pass_added_to_the_list_runs_and_is_checked(k3, monkeypatch, tmp_path):
    """A new pass is one function and one line in PASSES: it runs after the others, its graph is the one
    written, and a pass that changes what the graph computes is refused with nothing written."""
    import exporters.export as export_module
    from exporters.passes import PASSES

    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(20, 3, mask_zero=True)])
    seen = []

    def note(state):
        seen.append([t.layer.name for t in state.tables])
        state.model.graph.doc_string = "noted"

    monkeypatch.setattr(export_module, "PASSES", (*PASSES, note))
    export_keras(model, tmp_path / "noted.onnx")
    assert seen == [[model.layers[0].name]]
    assert onnx.load(str(tmp_path / "noted.onnx")).graph.doc_string == "noted"

    def double_table(state):
        (table,) = (i for i in state.model.graph.initializer if i.name.endswith(".embeddings"))
        doubled = onnx.numpy_helper.to_array(table) * 2
        table.CopyFrom(onnx.numpy_helper.from_array(doubled, table.name))

    monkeypatch.setattr(export_module, "PASSES", (*PASSES, double_table))
    with pytest.raises(ExportError, match="differs from Keras"):
        export_keras(model, tmp_path / "doubled.onnx")
    with pytest.raises(ExportError, match="rewrite changed outputs"):
        export_keras(model, tmp_path / "doubled.onnx", atol=100.0)
    assert not (tmp_path / "doubled.onnx").exists()


def test_report_says_masks_equal_only_when_masks_were_compared(k3, tmp_path):
    """A bool model output is not a mask: compared exactly, but the report must not claim masks."""
    ids = k3.Input((None,), dtype="int64", name="ids")
    vectors = k3.layers.Embedding(20, 3, name="emb")(ids)
    model = k3.Model(ids, {"vectors": vectors, "real": k3.ops.not_equal(ids, 0)})
    report = export_keras(model, tmp_path / "bool.onnx")
    assert [n for n, t, _ in report.outputs if t == "bool"] == ["real"]
    assert report.parity is not None and report.parity.equal_masks == []
    assert "masks equal" not in str(report) and "; no masks" in str(report)

    masked = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(20, 3, mask_zero=True)])
    report = export_keras(masked, tmp_path / "masked.onnx")
    assert report.parity is not None and report.parity.equal_masks == ["mask"]
    assert "; masks equal" in str(report)
