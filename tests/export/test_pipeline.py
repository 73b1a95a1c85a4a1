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


@pytest.mark.parametrize("length", [None, 6])
def test_parity_check_calls_keras_once_per_length_and_still_checks_every_case(
    k3, length, monkeypatch, tmp_path
):
    """Issue 11, item 7: the 27 cases of one length go to Keras as one batch (one eager call per length),
    and each case is still compared on its own."""
    from exporters.reference import KerasReference

    calls = []
    original = KerasReference.__call__

    def counted(self, feeds):
        calls.append({name: ids.shape for name, ids in feeds.items()})
        return original(self, feeds)

    monkeypatch.setattr(KerasReference, "__call__", counted)
    ids = k3.Input((length,), dtype="int64", name="ids")
    model = k3.Model(ids, k3.layers.LSTM(3)(k3.layers.Embedding(20, 4, mask_zero=True)(ids)))
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.parity is not None and report.parity.cases == (27 if length is None else 9)
    assert calls == (
        [{"ids": (120, 1)}, {"ids": (120, 10)}, {"ids": (120, 37)}] if length is None else [{"ids": (120, 6)}]
    )


def test_rows_that_depend_on_each_other_are_checked_case_by_case(k3, tmp_path):
    """A model that mixes the rows of a batch gives other values on the cases joined than on each case
    alone; the case alone decides, so the export passes (and a wrong graph would still fail)."""
    ids = k3.Input((None,), dtype="int64", name="ids")
    x = k3.layers.GlobalAveragePooling1D()(k3.layers.Embedding(20, 4, mask_zero=True)(ids))
    centred = k3.layers.Lambda(lambda t: t - k3.ops.mean(t, axis=0, keepdims=True), name="centred")(x)
    model = k3.Model(ids, centred)
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.parity is not None and report.parity.cases == 27 and report.parity.worst <= 1e-5
