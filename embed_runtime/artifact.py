"""The data files of an exported model: are they the ones its ``.onnx`` was written with?

A model with big tables is a pair, ``model.onnx`` and ``model.onnx.<sha256 prefix>.data`` beside it, which
onnxruntime memory-maps. The exporter records every data file in the metadata key
:data:`~embed_runtime.contract.KEY_EXTERNAL_DATA` (a JSON list of :class:`DataFile`). A data file that was
replaced or changed in place after the export would otherwise load without error and give wrong rows.

* At load, :func:`check_data_files` (called by :class:`~embed_runtime.Runtime`) checks each recorded file's
  **size** and a **sampled fingerprint**: the sha256 of :data:`SAMPLE_COUNT` blocks of
  :data:`SAMPLE_BYTES` spread evenly over the file (:func:`sample_sha256`), so a load reads at most
  64 KiB whatever the file's size. The size catches a truncated, extended or differently shaped file; the
  sample catches a same-size file with other contents (retrained tables differ in every block), but not a
  change confined to bytes between the samples.
* ``embed-runtime info`` runs :func:`verify_sha256`, which hashes each whole file (seconds per GB).

Models without the key (foreign files, inline exports) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .contract import KEY_EXTERNAL_DATA
from .errors import ModelLoadError

SAMPLE_COUNT = 16
"""Blocks in the sampled fingerprint; the first starts at offset 0 and the last ends at the file's end."""

SAMPLE_BYTES = 4096
"""Bytes per sampled block."""

_READ_BYTES = 8 << 20
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DataFile:
    """What the ``.onnx`` records about one external data file (one entry of the metadata list).

    Attributes:
        location: the file name, relative to the ``.onnx``'s folder (never a path).
        bytes: the file's size.
        sha256: hex sha256 of the whole file.
        sample_sha256: hex :func:`sample_sha256` of the file.
    """

    location: str
    bytes: int
    sha256: str
    sample_sha256: str

    @classmethod
    def from_dict(cls, d: Any) -> DataFile:
        """Parse one entry; raises ``ValueError`` saying what is wrong."""
        if not isinstance(d, dict) or set(d) != {"location", "bytes", "sha256", "sample_sha256"}:
            raise ValueError(f"entry {d!r} is not an object with location, bytes, sha256, sample_sha256")
        location, size = d["location"], d["bytes"]
        if (
            not isinstance(location, str)
            or location in ("", ".", "..")
            or "/" in location
            or "\\" in location
        ):
            raise ValueError(f"location {location!r} is not a file name beside the model")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{location}: bytes must be an integer >= 0, found {size!r}")
        for key in ("sha256", "sample_sha256"):
            value = d[key]
            if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
                raise ValueError(f"{location}: {key} must be 64 lowercase hex digits, found {value!r}")
        return cls(location, size, d["sha256"], d["sample_sha256"])


def records_json(files: Iterable[DataFile]) -> str:
    """The metadata value recording ``files``."""
    return json.dumps([asdict(f) for f in files], sort_keys=True)


def read_records(props: Mapping[str, str]) -> list[DataFile]:
    """The data files recorded in a model's metadata (none without the key); ``ValueError`` if malformed."""
    text = props.get(KEY_EXTERNAL_DATA)
    if text is None:
        return []
    try:
        entries = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"metadata {KEY_EXTERNAL_DATA!r} is not valid JSON") from None
    if not isinstance(entries, list):
        raise ValueError(
            f"metadata {KEY_EXTERNAL_DATA!r} must be a JSON list, found {type(entries).__name__}"
        )
    return [DataFile.from_dict(e) for e in entries]


def sample_offsets(size: int) -> list[int]:
    """Start of each sampled block of a ``size``-byte file; one block at 0 covering a small file whole."""
    if size <= SAMPLE_COUNT * SAMPLE_BYTES:
        return [0]
    last = size - SAMPLE_BYTES
    return [i * last // (SAMPLE_COUNT - 1) for i in range(SAMPLE_COUNT)]


def sample_sha256(path: Path, size: int) -> str:
    """sha256 of the blocks at :func:`sample_offsets` (``size``: the file's size; a file of at most
    ``SAMPLE_COUNT * SAMPLE_BYTES`` bytes is hashed whole)."""
    digest = hashlib.sha256()
    whole = size <= SAMPLE_COUNT * SAMPLE_BYTES
    with open(path, "rb") as f:
        for offset in sample_offsets(size):
            f.seek(offset)
            digest.update(f.read(size if whole else SAMPLE_BYTES))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _records(model_path: Path, props: Mapping[str, str]) -> list[DataFile]:
    try:
        return read_records(props)
    except ValueError as exc:
        raise ModelLoadError(f"{model_path}: malformed metadata {KEY_EXTERNAL_DATA!r}: {exc}") from None


def check_data_files(model_path: Path, props: Mapping[str, str]) -> None:
    """Raise :class:`ModelLoadError` unless every data file recorded in ``props`` (the model's metadata)
    is beside ``model_path`` with the recorded size and sampled fingerprint."""
    for record in _records(model_path, props):
        path = model_path.parent / record.location
        try:
            size = os.stat(path).st_size
            sample = sample_sha256(path, size) if size == record.bytes else ""
        except OSError as exc:
            raise ModelLoadError(f"{model_path}: cannot read its data file {path}: {exc.strerror}") from None
        if size != record.bytes:
            wrong = f"expected {record.bytes:,} bytes as recorded in {model_path.name}, found {size:,}"
        elif sample != record.sample_sha256:
            wrong = f"the size is right but the contents differ from what {model_path.name} records (sampled sha256)"
        else:
            continue
        raise ModelLoadError(
            f"{path}: {wrong}. The data file was replaced or changed after the export; replace a model's "
            "files by renaming new ones into place, never by writing over them (see docs/large-tables.md)"
        )


def verify_sha256(model_path: Path, props: Mapping[str, str]) -> list[tuple[DataFile, str]]:
    """Each recorded data file with the sha256 of the file now beside ``model_path`` (reads it whole)."""
    found = []
    for record in _records(model_path, props):
        try:
            found.append((record, file_sha256(model_path.parent / record.location)))
        except OSError as exc:
            raise ModelLoadError(
                f"{model_path}: cannot read its data file {record.location}: {exc}"
            ) from None
    return found
