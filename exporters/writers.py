"""Writers: put the finished graph on disk so that a failed export leaves nothing behind.

:func:`open_writer` picks one. :class:`InlineWriter` writes one self-contained ``.onnx``;
:class:`ExternalDataWriter` (big tables converted as stand-ins, see :mod:`exporters.large`) streams the
real tables into ``<path>.data`` and points the graph at them. Both give the parity check the graph as it
will be read back (:meth:`Writer.session`) before :meth:`Writer.write` puts it in place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import onnx

from . import large
from .convert import load_rewritten


class Writer(Protocol):
    """Where the finished graph goes."""

    external_data: Path | None
    """The data file written beside the ``.onnx`` (after :meth:`write`), None when there is none."""

    def session(self, graph: onnx.ModelProto) -> Any:
        """An onnxruntime CPU session of ``graph`` as it will be read from disk."""
        ...

    def write(self, graph: onnx.ModelProto) -> None:
        """Put ``graph`` (finalized) at the destination path, replacing what was there."""
        ...


class InlineWriter:
    """The whole graph, tables included, in one ``.onnx``: written to a temporary file beside ``path``
    and renamed into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.external_data: Path | None = None

    def session(self, graph: onnx.ModelProto) -> Any:
        """A session of ``graph`` itself (it is written as it is)."""
        return load_rewritten(graph)

    def write(self, graph: onnx.ModelProto) -> None:
        """Write to a temporary file in the destination folder, then rename it into place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(graph.SerializeToString())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ExternalDataWriter:
    """The graph in the ``.onnx``, the big tables in ``<path>.data`` beside it, both staged in a temporary
    folder (:class:`exporters.large.Staging`) whose data file already holds the real tables."""

    def __init__(self, stage: large.Staging, placed: Sequence[large.Placement]) -> None:
        self.stage = stage
        self.placed = placed
        self.location = large.data_file_name(stage.path)
        self.external_data: Path | None = None

    def session(self, graph: onnx.ModelProto) -> Any:
        """A session of the staged pair: a copy of ``graph`` pointed at the staged data file."""
        staged = onnx.ModelProto()
        staged.CopyFrom(graph)
        large.point_to(staged, self.placed, self.location)
        self.stage.write_model(staged)
        return load_rewritten(self.stage.model_path)

    def write(self, graph: onnx.ModelProto) -> None:
        """Point ``graph``'s big tables at the data file, check the staged pair, rename both into place.

        ``graph`` was checked by :func:`exporters.rewrite.finalize` while the stand-ins were still inline
        (onnx's checker would look for the data file relative to the working directory); the staged
        file is checked here by path.
        """
        large.point_to(graph, self.placed, self.location)
        self.stage.write_model(graph)
        onnx.checker.check_model(str(self.stage.model_path))
        self.external_data = self.stage.commit()


@contextmanager
def open_writer(path: Path, graph: onnx.ModelProto, stand_ins: Sequence[large.StandIn]) -> Iterator[Writer]:
    """The writer for ``graph``: inline without stand-ins; else one whose staged data file already holds
    the real tables, streamed from the Keras variables. While the block runs the layers read one
    snapshot of their big tables (:func:`exporters.large.read_once`); afterwards the staging folder is
    gone, with whatever a failed export left in it."""
    if not stand_ins:
        yield InlineWriter(path)
        return
    with large.Staging(path) as stage, large.read_once(stand_ins) as tables:
        placed = large.write_tables(graph, stand_ins, tables, stage.data_path)
        yield ExternalDataWriter(stage, placed)
