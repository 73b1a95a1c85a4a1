"""``embed_runtime.format``: ``"2"`` exactly when a text spec is in the graph (the graph input takes
strings, which a format-1 runtime, ignoring ``in_graph``, fed int64 ids to: wrong outputs, no error),
``"1"`` otherwise so that older runtimes keep reading those models; a format the runtime does not read is
refused at load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import embed_runtime
from embed_runtime import ModelLoadError
from embed_runtime.contract import KEY_FORMAT, ModelMetadata, TextSpec, text_props

MODELS = Path(__file__).resolve().parents[2] / "models"
FIXTURE = Path(__file__).parent / "data" / "string_lookup.onnx"
"""Exported with its StringLookup in the graph (tests/runtime/data/build_string_lookup.py)."""

SPEC = TextSpec(
    input="tokens", layer="lookup", layer_class="StringLookup", standardize=None, split=None,
    vocabulary=("", "[UNK]", "a", "b"), oov_token="[UNK]", mask_token="", num_oov_indices=1,
    output_sequence_length=None, keras_flavour="keras3", keras_version="3.0.0",
)  # fmt: skip


def test_format_is_2_exactly_when_a_text_spec_is_in_the_graph() -> None:
    assert ModelMetadata().to_props()[KEY_FORMAT] == "1"
    assert ModelMetadata(raw=text_props([SPEC])).to_props()[KEY_FORMAT] == "1"
    in_graph = text_props([replace(SPEC, in_graph=True)])
    assert ModelMetadata(raw=in_graph).to_props()[KEY_FORMAT] == "2"


def test_committed_artifacts_carry_their_format() -> None:
    declared = embed_runtime.load(MODELS / "text" / "model.onnx", providers="cpu")
    assert declared.text is not None
    assert not any(t.spec.in_graph for t in declared.text.tokenizers.values())
    assert declared.metadata.raw[KEY_FORMAT] == "1"
    in_graph = embed_runtime.load(FIXTURE, providers="cpu")
    assert in_graph.text is not None and in_graph.text.tokenizers["tokens"].spec.in_graph
    assert in_graph.metadata.raw[KEY_FORMAT] == "2"


@pytest.mark.parametrize("found", ["3", "0", "2.0", ""])
def test_a_format_this_version_does_not_read_is_refused_at_load(found: str, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(FIXTURE))
    for prop in model.metadata_props:
        if prop.key == KEY_FORMAT:
            prop.value = found
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelLoadError) as refused:
        embed_runtime.load(tmp_path / "m.onnx", providers="cpu")
    message = str(refused.value)
    assert "\n" not in message
    assert f"embed_runtime.format is {found!r}, and this embed-runtime reads formats '1' and '2'" in message
    assert message.endswith("upgrade embed-runtime to load this model")
