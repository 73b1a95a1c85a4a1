"""Malformed metadata, padding where id 0 is a real token, option and batch size values, unwritable outputs:
each is a clear error, never a silent wrong answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import embed_runtime
from embed_runtime import ConfigurationError, InvalidInputError, ModelLoadError, RuntimeOptions
from embed_runtime.contract import KEY_EMBEDDINGS

from .conftest import Built


def with_embeddings(built: Built, tmp_path: Path, value: object) -> Path:
    """A copy of ``built`` whose ``embed_runtime.embeddings`` metadata is ``value`` (JSON-encoded)."""
    model = onnx.load(str(built.path))
    for prop in model.metadata_props:
        if prop.key == KEY_EMBEDDINGS:
            prop.value = json.dumps(value)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("entries", "pattern"),
    [
        (
            [{"layer": "e", "inputs": "input_ids", "input_dim": 10, "output_dim": 4, "mask_zero": True}],
            "'inputs' must be a list",
        ),
        (
            [{"layer": "e", "inputs": ["nope"], "input_dim": 10, "output_dim": 4, "mask_zero": True}],
            "names input\\(s\\) 'nope'",
        ),
        ([1], "not a JSON object"),
        (
            [{"layer": "e", "inputs": ["input_ids"], "input_dim": -5, "output_dim": 4, "mask_zero": True}],
            "'input_dim' must be an integer >= 1",
        ),
        (
            [{"layer": "e", "inputs": ["input_ids"], "input_dim": 10, "output_dim": 4}],
            "lacks the key 'mask_zero'",
        ),
    ],
)
def test_malformed_metadata_refuses_to_load(
    single: Built, tmp_path: Path, entries: object, pattern: str
) -> None:
    """Metadata that would switch range checks off (so -1 would reach Gather and wrap) is refused."""
    with pytest.raises(ModelLoadError, match=pattern):
        embed_runtime.load(with_embeddings(single, tmp_path, entries), providers="cpu")


def test_no_padding_where_id_zero_is_a_real_token(models: dict[str, Built]) -> None:
    rt = embed_runtime.load(models["nomask"].path, providers="cpu")
    assert rt.inputs[0].padding_id is None
    with pytest.raises(
        InvalidInputError, match=r"row 1 has 1 ids but the longest row is 3.*id 0 is a real token"
    ):
        rt.run([[4, 20, 7], [1]])
    np.testing.assert_array_equal(
        rt.run([[4, 20, 7], [1, 2, 3]])["emb"], models["nomask"].tables["input_ids"][[[4, 20, 7], [1, 2, 3]]]
    )
    masked = embed_runtime.load(models["single"].path, providers="cpu")
    assert masked.inputs[0].padding_id == 0
    out = masked.run([[4, 20, 7], [1]])  # mask_zero: padded, and the mask says where
    np.testing.assert_array_equal(out["mask"], [[True, True, True], [True, False, False]])


def test_short_rows_for_a_fixed_length_without_mask(tmp_path: Path) -> None:
    from .conftest import build_model

    built = build_model(tmp_path / "fixed_nomask.onnx", [("input_ids", 50, 5)], mask=False)
    rt = embed_runtime.load(built.path, providers="cpu")
    with pytest.raises(InvalidInputError, match="fixed input_length is 5"):
        rt.run([[1, 2, 3]])
    with pytest.raises(InvalidInputError, match="fixed input_length is 5"):
        rt.run(np.array([[1, 2, 3]]))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"intra_op_threads": -3}, "intra_op_threads must be an integer >= 0 or None"),
        ({"io_binding_cache": 0}, "io_binding_cache must be an integer >= 1"),
        ({"io_binding_max_bytes": 1.5}, "io_binding_max_bytes must be an integer >= 0"),
        ({"graph_optimization_level": "max"}, "graph_optimization_level must be one of"),
    ],
)
def test_option_values_are_checked(options: dict[str, object], pattern: str) -> None:
    """A bad setting is a ConfigurationError, not the id/shape error the server answers with HTTP 400."""
    with pytest.raises(ConfigurationError, match=pattern) as info:
        RuntimeOptions(**options)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and not isinstance(info.value, InvalidInputError)


def test_threads_argument_is_checked(single: Built) -> None:
    with pytest.raises(ConfigurationError, match="intra_op_threads"):
        embed_runtime.load(single.path, providers="cpu", threads=-1)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True, "8", None])
def test_batch_size_must_be_a_positive_integer(single: Built, batch_size: object) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    with pytest.raises(ConfigurationError, match=r"batch_size must be an integer >= 1 .*got ") as info:
        list(rt.run_batched(np.ones((4, 2), np.int64), batch_size=batch_size, progress=False))  # type: ignore[arg-type]
    assert not isinstance(info.value, InvalidInputError)


def test_numpy_integer_batch_size(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    chunks = list(rt.run_batched(np.ones((5, 2), np.int64), batch_size=np.int64(2), progress=False))  # type: ignore[arg-type]
    assert [c["mask"].shape[0] for c in chunks] == [2, 2, 1]


def test_cli_unwritable_output_is_a_clean_error(single: Built, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "out.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embed_runtime.cli",
            "run",
            str(single.path),
            "--ids",
            "[[1, 2]]",
            "--output",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
