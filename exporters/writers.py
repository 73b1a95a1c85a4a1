"""Writers: put the finished graph on disk so that no failure or crash leaves a half-right artifact.

:func:`open_writer` picks one. :class:`InlineWriter` writes one self-contained ``.onnx``;
:class:`ExternalDataWriter` (big tables converted as stand-ins, see :mod:`exporters.large`) streams the
real tables into a data file beside the ``.onnx`` and points the graph at it. Both give the parity check
the graph as it will be read back (:meth:`Writer.session`) before :meth:`Writer.write` puts it in place.

What every export guarantees:

* **Replacing a model is safe.** The data file is named after its contents,
  ``<model>.onnx.<first 16 hex digits of its sha256>.data`` (:func:`data_file_name`), and is staged with
  the ``.onnx`` in a hidden folder beside the destination (:class:`Staging`). Both are renamed into
  place, the ``.onnx`` last, so an ``.onnx`` always points at its own data wherever a crash stops the
  export, and no export writes into a file that a running process may have memory-mapped. The data files
  of earlier exports of the same model (names :func:`is_data_file_of` accepts, nothing else) are unlinked
  once the new ``.onnx`` is in place; a process that mapped one keeps reading it.
* The renames and that clean-up hold an exclusive ``flock`` on the destination folder, so two exports to
  one path at once cannot remove each other's data file (platforms without ``fcntl`` get no lock).
* The ``.onnx`` records each data file's size and checksums (:mod:`embed_runtime.artifact`); the runtime
  refuses a data file that does not match.
* Files get the mode the umask gives (0644 under the usual 022), like any file the user creates.
* Hidden leftovers of killed exports of the same model (``.<model>.onnx.<8 characters>.tmp``) that
  nothing wrote to for :data:`STALE_SECONDS` are removed by the next export to that folder.
* A destination that is a folder, lies under a regular file or cannot be written is an
  :class:`~exporters.errors.ExportError` naming it, not a raw ``OSError``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import onnx

from embed_runtime.artifact import DataFile, records_json, sample_sha256
from embed_runtime.contract import KEY_EXTERNAL_DATA

from . import large
from .convert import load_rewritten
from .errors import ExportError

STALE_SECONDS = 3600.0
"""A staging leftover nothing has written to for this long belongs to a killed export."""


@dataclass(frozen=True)
class Written:
    """What :meth:`Writer.write` put in place, measured from the bytes it wrote (another export to the
    same path may replace, and unlink, the files at any time afterwards)."""

    size: int
    """Bytes of the ``.onnx``."""
    sha256: str
    """Hex sha256 of the ``.onnx``: one model exported twice gives the same."""
    external_data: Path | None = None
    """The data file written beside the ``.onnx``, None when there is none."""
    data: DataFile | None = None
    """What the ``.onnx`` records about that data file (size, checksums)."""

    @classmethod
    def of(cls, blob: bytes, external_data: Path | None = None, data: DataFile | None = None) -> Written:
        """``blob``, the ``.onnx``'s bytes as written, measured."""
        return cls(len(blob), hashlib.sha256(blob).hexdigest(), external_data, data)


class Writer(Protocol):
    """Where the finished graph goes."""

    def session(self, graph: onnx.ModelProto) -> Any:
        """An onnxruntime CPU session of ``graph`` as it will be read from disk."""
        ...

    def write(self, graph: onnx.ModelProto) -> Written:
        """Put ``graph`` (finalized) at the destination path, replacing what was there; returns what was
        written."""
        ...


def data_file_name(model_path: Path, sha256: str) -> str:
    """Name of the data file of ``model_path`` holding bytes of this sha256 (hex): unique to the contents."""
    return f"{model_path.name}.{sha256[:16]}.data"


def is_data_file_of(model_path: Path, name: str) -> bool:
    """Whether ``name`` is a data file name exports of ``model_path`` use: ``<model>.onnx.<16 hex>.data``,
    or ``<model>.onnx.data`` (the single name used before data files were named after their contents)."""
    return re.fullmatch(re.escape(model_path.name) + r"\.(?:[0-9a-f]{16}\.)?data", name) is not None


def check_destination(path: Path) -> None:
    """Raise :class:`ExportError` if ``path`` cannot take an export: it is a folder, a folder on the way
    is a regular file, or the nearest existing folder is not writable (as far as ``os.access`` can tell;
    the writes themselves are checked too)."""
    try:
        if path.is_dir():
            raise ExportError(
                f"destination {path} is a folder; give the path of the .onnx file to write, such as "
                f"{path / 'model.onnx'}"
            )
        folder = path.parent
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ExportError(f"cannot write {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ExportError(f"cannot write {path}: folder {folder} is not writable")
    except OSError as exc:
        raise _destination_error(path, exc) from exc


def _destination_error(path: Path, exc: OSError) -> ExportError:
    where = f" ({exc.filename})" if exc.filename else ""
    return ExportError(f"cannot write {path}: {exc.strerror or exc}{where}")


@contextmanager
def destination(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` of creating folders or files at ``path``, or renaming them there, into an
    :class:`ExportError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise _destination_error(path, exc) from exc


def create_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new, empty ``<prefix><8 hex digits>.tmp`` in ``folder``, open for writing, with the mode the umask
    gives (``tempfile.mkstemp`` always gives 0600)."""
    path = folder / f"{prefix}{secrets.token_hex(4)}.tmp"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path


def _last_write(entry: Path) -> float:
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times += [child.lstat().st_mtime for child in entry.iterdir()]
    return max(times)


def remove_stale(path: Path) -> None:
    """Remove the hidden staging files and folders of exports of ``path`` (``.<name>.<8 characters>.tmp``,
    as :class:`Staging` and :class:`InlineWriter` make them) that nothing wrote to for
    :data:`STALE_SECONDS`: a killed export left them."""
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.[a-z0-9_]{8}\.tmp")
    now = time.time()
    for entry in path.parent.iterdir():
        if not pattern.fullmatch(entry.name):
            continue
        with suppress(OSError):  # gone meanwhile, or not ours to remove: leave it
            if now - _last_write(entry) > STALE_SECONDS:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def remove_old_data(path: Path, keep: str | None) -> None:
    """Unlink the data files of earlier exports of ``path`` (:func:`is_data_file_of`) except ``keep``. A
    process that memory-mapped one keeps its pages; where unlinking a mapped file fails (Windows), the
    file stays until a later export."""
    for entry in path.parent.iterdir():
        if entry.name != keep and is_data_file_of(path, entry.name):
            with suppress(OSError):
                entry.unlink()


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` while the block runs (no lock without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def put_in_place(path: Path, staged: Sequence[tuple[Path, Path]], keep: str | None) -> None:
    """Rename each (staged file, target) in order, the ``.onnx`` last, then remove the data files of
    earlier exports of ``path`` except ``keep``; all under the folder's lock."""
    with destination(path), folder_lock(path.parent):
        for source, target in staged:
            os.replace(source, target)
        remove_old_data(path, keep)


class InlineWriter:
    """The whole graph, tables included, in one ``.onnx``: written to a temporary file beside ``path``
    and renamed into place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def session(self, graph: onnx.ModelProto) -> Any:
        """A session of ``graph`` itself (it is written as it is)."""
        return load_rewritten(graph)

    def write(self, graph: onnx.ModelProto) -> Written:
        """Write to a temporary file in the destination folder, then rename it into place."""
        with destination(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.path)
            fd, tmp = create_file(self.path.parent, f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                blob = graph.SerializeToString()
                f.write(blob)
            put_in_place(self.path, [(tmp, self.path)], keep=None)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Written.of(blob)


class Staging:
    """A temporary folder beside ``path`` holding the ``.onnx`` and its data file until :meth:`commit`.

    The files keep their final names inside it (the data file gets its name from its contents with
    :meth:`name_data`), so the relative external-data location resolves there exactly as it will beside
    ``path``. Leaving the ``with`` block removes the folder and whatever is still in it: a failed export
    leaves nothing behind (a killed one leaves the folder, which :func:`remove_stale` removes later).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with destination(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path)
            self.folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        self.model_path = self.folder / path.name
        self.data_path = self.folder / f"{path.name}.data"
        """Where the tables are written; :meth:`name_data` renames it after its contents."""

    def name_data(self, sha256: str) -> DataFile:
        """Give the written data file (whose bytes have this sha256) its name and describe it."""
        named = self.folder / data_file_name(self.path, sha256)
        os.replace(self.data_path, named)
        self.data_path = named
        size = named.stat().st_size
        return DataFile(named.name, size, sha256, sample_sha256(named, size))

    def write_model(self, model: onnx.ModelProto) -> bytes:
        """(Re)write the staged ``.onnx`` (only the graph: external tables stay where they are); returns
        the bytes written."""
        blob = model.SerializeToString()
        self.model_path.write_bytes(blob)
        return blob

    def commit(self) -> Path:
        """Rename the data file, then the model, into place (:func:`put_in_place`); returns the data
        file's final path."""
        data = self.path.parent / self.data_path.name
        put_in_place(self.path, [(self.data_path, data), (self.model_path, self.path)], keep=data.name)
        return data

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ExternalDataWriter:
    """The graph in the ``.onnx``, the big tables in the data file beside it, both staged in a
    :class:`Staging` folder whose data file already holds the real tables."""

    def __init__(self, stage: Staging, placed: Sequence[large.Placement], data: DataFile) -> None:
        self.stage = stage
        self.placed = placed
        self.data = data
        self.location = data.location

    def session(self, graph: onnx.ModelProto) -> Any:
        """A session of the staged pair: a copy of ``graph`` pointed at the staged data file."""
        staged = onnx.ModelProto()
        staged.CopyFrom(graph)
        large.point_to(staged, self.placed, self.location)
        self.stage.write_model(staged)
        return load_rewritten(self.stage.model_path)

    def write(self, graph: onnx.ModelProto) -> Written:
        """Point ``graph``'s big tables at the data file, record the file in the metadata, check the
        staged pair, rename both into place.

        ``graph`` was checked by :func:`exporters.rewrite.finalize` while the stand-ins were still inline
        (onnx's checker would look for the data file relative to the working directory); the staged
        file is checked here by path.
        """
        large.point_to(graph, self.placed, self.location)
        graph.metadata_props.add(key=KEY_EXTERNAL_DATA, value=records_json([self.data]))
        blob = self.stage.write_model(graph)
        onnx.checker.check_model(str(self.stage.model_path))
        return Written.of(blob, self.stage.commit(), self.data)


@contextmanager
def open_writer(path: Path, graph: onnx.ModelProto, stand_ins: Sequence[large.StandIn]) -> Iterator[Writer]:
    """The writer for ``graph`` at ``path`` (checked first, :func:`check_destination`): inline without
    stand-ins; else one whose staged data file already holds the real tables, streamed from the Keras
    variables. While the block runs the layers read one snapshot of their big tables
    (:func:`exporters.large.read_once`); afterwards the staging folder is gone, with whatever a failed
    export left in it."""
    check_destination(path)
    if not stand_ins:
        yield InlineWriter(path)
        return
    with Staging(path) as stage, large.read_once(stand_ins) as tables:
        placed, sha256 = large.write_tables(graph, stand_ins, tables, stage.data_path)
        yield ExternalDataWriter(stage, placed, stage.name_data(sha256))
