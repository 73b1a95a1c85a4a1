"""Committed reference models (``models/*/model.onnx``) reproduce their stored Keras outputs; a text model
(``texts.json`` beside it) also from its strings, without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import embed_runtime
from embed_runtime import InvalidInputError

MODELS = Path(__file__).resolve().parents[2] / "models"
FIXTURES = sorted(p.parent for p in MODELS.glob("*/model.onnx") if (p.parent / "golden.npz").is_file())
TEXT_FIXTURES = [f for f in FIXTURES if (f / "texts.json").is_file()]


def golden(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(folder / "golden.npz") as data:
        inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
        outputs = {k.removeprefix("output."): data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        if expected.dtype == np.bool_:
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        else:
            assert np.isfinite(expected).all(), f"{name}: golden.npz holds non-finite Keras outputs"
            np.testing.assert_allclose(got[name], expected, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.skipif(not FIXTURES, reason="no committed models/*/model.onnx with golden.npz yet")
@pytest.mark.parametrize("folder", FIXTURES, ids=[f.name for f in FIXTURES])
def test_golden(folder: Path) -> None:
    rt = embed_runtime.load(folder / "model.onnx", providers="cpu")
    inputs, outputs = golden(folder)
    assert rt.metadata.is_embed_runtime_artifact
    assert set(outputs) <= {o.name for o in rt.outputs}
    feeds = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    compare(rt.run(feeds), outputs)
    compare(rt.run(feeds), outputs)  # second call: the IO-binding fast path
    targets = {n: np.empty_like(v) for n, v in outputs.items()}
    compare(rt.run(feeds, out=targets, outputs=list(outputs)), outputs)
    chunks = list(rt.run_batched(inputs, batch_size=4, progress=False))
    compare({n: np.concatenate([c[n] for c in chunks]) for n in outputs}, outputs)
    for graph_input in rt.inputs:  # every id input is range-checked with the recorded input_dim
        assert graph_input.input_dim is not None
        bad = {k: v.copy() for k, v in inputs.items()}
        bad[graph_input.name][-1, 0] = graph_input.input_dim
        with pytest.raises(
            InvalidInputError, match=rf"'{graph_input.name}': id {graph_input.input_dim} at position"
        ):
            rt.run(bad)
        bad[graph_input.name][-1, 0] = -1
        with pytest.raises(InvalidInputError, match="id -1"):
            rt.run(bad)
    result = rt.run(feeds)
    for emb in rt.metadata.embeddings:
        if emb.mask_output is not None and len(emb.inputs) == 1:
            np.testing.assert_array_equal(result[emb.mask_output], inputs[emb.inputs[0]] != 0)


@pytest.mark.parametrize("folder", TEXT_FIXTURES, ids=[f.name for f in TEXT_FIXTURES])
def test_golden_strings(folder: Path) -> None:
    """Strings in (``texts.json``): the ids Keras's ``TextVectorization`` gave (``input.<name>``), its
    outputs and masks, as a list, as numpy ``str``/``object``/``bytes`` arrays and batch by batch."""
    texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
    rt = embed_runtime.load(folder / "model.onnx", providers="cpu")
    inputs, outputs = golden(folder)
    (name,) = inputs
    ids, mask = rt.tokenize(texts)
    np.testing.assert_array_equal(ids, inputs[name])
    np.testing.assert_array_equal(mask, inputs[name] != 0)
    as_bytes = np.array([t.encode("utf-8") for t in texts], dtype=object)
    for batch in (texts, np.array(texts), np.array(texts, dtype=object), as_bytes):
        compare(rt.run(batch), outputs)
    chunks = list(rt.run_batched(texts, batch_size=5, progress=False))  # each chunk padded on its own
    floats = {n: v for n, v in outputs.items() if v.dtype != np.bool_}  # masks: each chunk's own length
    compare({n: np.concatenate([c[n] for c in chunks]) for n in floats}, floats)
