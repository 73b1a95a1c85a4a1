"""The export pipeline: the pass list is the one place a rewrite goes, and the report says what was checked."""

from __future__ import annotations

from pathlib import Path

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


def _rows_and_head(keras, mask_zero: bool):
    """Embedding rows as one output and a pooled Dense head on them as another."""
    inp = keras.Input((None,), dtype="int64", name="ids")
    rows = keras.layers.Embedding(30, 4, mask_zero=mask_zero, name="emb")(inp)
    head = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling1D()(rows))
    return keras.Model(inp, {"rows": rows, "head": head})


@pytest.mark.parametrize("table_dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("external", [False, True])
def test_pure_lookups_are_declared_and_served_by_numpy(k3, tmp_path, table_dtype, external):
    """The pure-lookup pass declares an output that is exactly the lookup, in each table dtype's form (the
    seed's shape: fixed length, no mask), inline or as external data (converted from a stand-in table),
    and the runtime answers it from numpy with onnxruntime's bytes."""
    import numpy as np

    import embed_runtime

    seed = k3.Sequential([k3.Input((10,), dtype="int64"), k3.layers.Embedding(50, 8, name="embedding")])
    export_keras(
        seed, tmp_path / "seed.onnx", table_dtype=table_dtype, external_data_threshold=1 if external else None
    )
    rt = embed_runtime.load(tmp_path / "seed.onnx", providers="cpu")
    assert [e.lookup_output for e in rt.metadata.embeddings] == ["embedding"]
    assert rt.execution.startswith("numpy lookup (embedding 50x8 float32")
    plain = embed_runtime.load(
        tmp_path / "seed.onnx", options=embed_runtime.RuntimeOptions(lookup_fast_path=False)
    )
    ids = np.random.default_rng(0).integers(0, 50, (4, 10))
    assert rt.run(ids)["embedding"].tobytes() == plain.run(ids)["embedding"].tobytes()


def test_only_the_lookup_output_is_declared_and_keras_int8_is_one(k3, tmp_path):
    """With a head on the rows, the rows are declared (with their mask) and the head is not; a Keras
    ``quantize("int8")`` table's ``Div`` form is a lookup too."""
    import embed_runtime

    model = _rows_and_head(k3, mask_zero=True)
    export_keras(model, tmp_path / "m.onnx")
    (info,) = embed_runtime.load(tmp_path / "m.onnx").metadata.embeddings
    assert (info.lookup_output, info.mask_output) == ("rows", "mask")
    model.quantize("int8")
    export_keras(model, tmp_path / "q.onnx", atol=1e-4)
    (info,) = embed_runtime.load(tmp_path / "q.onnx").metadata.embeddings
    assert (info.lookup_output, info.quantization) == ("rows", "per_row_inverse_scale")


def test_a_classifier_declares_no_lookup(k3, tmp_path):
    """The classifier's only float output is pooled: nothing is declared and the runtime stays on
    onnxruntime (the committed classifier is this shape too)."""
    import embed_runtime

    inp = k3.Input((None,), dtype="int64", name="token_ids")
    rows = k3.layers.Embedding(40, 4, mask_zero=True, name="embedding")(inp)
    out = k3.layers.Dense(1, activation="sigmoid", name="probability")(
        k3.layers.GlobalAveragePooling1D()(rows)
    )
    export_keras(k3.Model(inp, out), tmp_path / "c.onnx")
    rt = embed_runtime.load(tmp_path / "c.onnx")
    assert [e.lookup_output for e in rt.metadata.embeddings] == [None]
    assert rt.execution == "onnxruntime: no output is a declared lookup"
    committed = Path(__file__).resolve().parents[2] / "models" / "classifier" / "model.onnx"
    assert embed_runtime.load(committed).metadata.embeddings[0].lookup_output is None
