"""A model's external data file must be the one its ``.onnx`` records (:mod:`embed_runtime.artifact`).

The pairs are built with the onnx helper API (no TensorFlow): one table of 4096 x 16 float32 (256 KiB,
more than the 64 KiB the load-time sample reads) in a data file, recorded the way the exporter does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import convert_model_to_external_data

import embed_runtime
from embed_runtime import ModelLoadError, artifact, cli
from embed_runtime.contract import KEY_EXTERNAL_DATA

from .conftest import build_model

ROWS, WIDTH = 4096, 16
LOCATION = "m.onnx.0123456789abcdef.data"
IDS = np.array([[1, 2, ROWS - 1], [0, 7, 2048]], np.int64)


def record_of(data: Path) -> dict[str, object]:
    """The metadata entry of ``data``; the sample is the documented one (see test_sample_is_the_documented_blocks)."""
    size = data.stat().st_size
    return {
        "location": data.name,
        "bytes": size,
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "sample_sha256": artifact.sample_sha256(data, size),
    }


def make_pair(folder: Path, seed_dim: int = WIDTH, record: object = "computed") -> tuple[Path, np.ndarray]:
    """``folder/m.onnx`` with its table in ``folder/LOCATION``; ``record`` is the metadata value to store
    (``"computed"``: the true record of the data file; None: no key). Returns (model path, table)."""
    folder.mkdir(parents=True, exist_ok=True)
    built = build_model(folder / "m.onnx", [("input_ids", ROWS, None)], dim=seed_dim)
    model = onnx.load(str(built.path))
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=LOCATION, size_threshold=1024
    )
    onnx.save_model(model, str(built.path))
    model = onnx.load(str(built.path), load_external_data=False)
    if record == "computed":
        record = json.dumps([record_of(folder / LOCATION)])
    if record is not None:
        model.metadata_props.add(key=KEY_EXTERNAL_DATA, value=str(record))
    built.path.write_bytes(model.SerializeToString())
    return built.path, built.tables["input_ids"]


def test_an_intact_pair_loads_and_runs(tmp_path: Path) -> None:
    path, table = make_pair(tmp_path)
    assert (tmp_path / LOCATION).stat().st_size >= table.nbytes
    rt = embed_runtime.load(path, providers="cpu")
    np.testing.assert_array_equal(rt.run(IDS)["emb"], table[IDS])


def test_a_longer_data_file_is_refused_with_both_sizes(tmp_path: Path) -> None:
    path, _ = make_pair(tmp_path)
    data = tmp_path / LOCATION
    size = data.stat().st_size
    with open(data, "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(ModelLoadError) as info:
        embed_runtime.load(path, providers="cpu")
    message = str(info.value)
    assert (
        LOCATION in message and f"expected {size:,} bytes" in message and f"found {size + 100:,}" in message
    )
    assert "renaming new ones into place" in message


def test_the_old_model_beside_a_new_export_of_the_same_size_is_refused(tmp_path: Path) -> None:
    """What a crash between the two renames of a same-name scheme left: the old .onnx next to the new
    export's data file. Same size, other rows: it used to load and return the new table's rows."""
    old, _ = make_pair(tmp_path / "old")
    make_pair(tmp_path / "new")
    other = np.random.default_rng(99).standard_normal((ROWS, WIDTH)).astype(np.float32)
    new_data = tmp_path / "new" / LOCATION
    new_data.write_bytes(other.tobytes() + new_data.read_bytes()[other.nbytes :])
    (tmp_path / "new" / LOCATION).replace(tmp_path / "old" / LOCATION)
    with pytest.raises(ModelLoadError, match=r"contents differ .*sampled sha256") as info:
        embed_runtime.load(old, providers="cpu")
    assert str(tmp_path / "old" / LOCATION) in str(info.value)


def test_a_missing_data_file_is_a_load_error(tmp_path: Path) -> None:
    path, _ = make_pair(tmp_path)
    (tmp_path / LOCATION).unlink()
    with pytest.raises(ModelLoadError):
        embed_runtime.load(path, providers="cpu")


def test_a_model_without_the_record_is_not_checked(tmp_path: Path) -> None:
    path, table = make_pair(tmp_path, record=None)
    with open(tmp_path / LOCATION, "ab") as f:
        f.write(b"\0" * 100)  # onnxruntime reads within (offset, length); nothing records the size
    np.testing.assert_array_equal(embed_runtime.load(path, providers="cpu").run(IDS)["emb"], table[IDS])


GOOD = {"location": LOCATION, "bytes": 1, "sha256": "0" * 64, "sample_sha256": "0" * 64}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not json", "not valid JSON"),
        ("[" * 100000, "not valid JSON"),
        (json.dumps(GOOD), "must be a JSON list"),
        (json.dumps([{"location": LOCATION}]), "is not an object with"),
        (json.dumps([{**GOOD, "location": "../" + LOCATION}]), "not a file name beside the model"),
        (json.dumps([{**GOOD, "location": "/etc/passwd"}]), "not a file name beside the model"),
        (json.dumps([{**GOOD, "bytes": -1}]), "integer >= 0"),
        (json.dumps([{**GOOD, "bytes": True}]), "integer >= 0"),
        (json.dumps([{**GOOD, "sha256": "XYZ"}]), "64 lowercase hex digits"),
    ],
)
def test_a_malformed_record_is_a_load_error(tmp_path: Path, value: str, words: str) -> None:
    path, _ = make_pair(tmp_path, record=value)
    with pytest.raises(ModelLoadError, match=f"malformed metadata .*{words}"):
        embed_runtime.load(path, providers="cpu")


def test_the_sample_is_the_documented_blocks(tmp_path: Path) -> None:
    """16 blocks of 4 KiB, the i-th at i * (size - 4096) // 15; a file of at most 64 KiB is hashed whole."""
    big = tmp_path / "big"
    big.write_bytes(np.random.default_rng(1).bytes(300_001))
    raw = big.read_bytes()
    blocks = b"".join(raw[o : o + 4096] for o in (i * (300_001 - 4096) // 15 for i in range(16)))
    assert artifact.sample_sha256(big, 300_001) == hashlib.sha256(blocks).hexdigest()
    small = tmp_path / "small"
    small.write_bytes(raw[: 16 * 4096])
    assert artifact.sample_sha256(small, 16 * 4096) == hashlib.sha256(raw[: 16 * 4096]).hexdigest()


def test_info_checks_the_full_sha256(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = make_pair(tmp_path)
    data = tmp_path / LOCATION
    assert cli.main(["info", str(path), "--providers", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{LOCATION}: {data.stat().st_size:,} bytes, sha256 OK" in out

    # one byte between two sampled blocks: the load-time check cannot see it (the documented limit),
    # info's full hash does
    between = artifact.SAMPLE_BYTES + 10
    assert all(
        not o <= between < o + artifact.SAMPLE_BYTES for o in artifact.sample_offsets(data.stat().st_size)
    )
    raw = bytearray(data.read_bytes())
    raw[between] ^= 0xFF
    data.write_bytes(bytes(raw))
    embed_runtime.load(path, providers="cpu")
    assert cli.main(["info", str(path), "--providers", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert f"{LOCATION}: {len(raw):,} bytes, sha256 MISMATCH: recorded " in out
    assert err.count("\n") == 1 and "embed-runtime info: error:" in err and LOCATION in err
