"""A Parquet sink that keeps the dataset's row order; ``embed-runtime batch`` writes through it.

Ray Data's own ``write_parquet`` (Ray 2.60) hands each write task's blocks to
``pyarrow.dataset.write_dataset(use_threads=True)`` without ``preserve_order``, which may write the
record batches of a file in another order even with ``DataContext.execution_options.preserve_order``
set (measured: a file of 512-row batches out of order in half of the runs). This sink writes each task's
blocks one after the other into one file named after the task's index, ``part-000042.parquet``; with
``preserve_order`` tasks take their input in dataset order, so reading the folder in name order (as
``pyarrow.parquet.read_table`` does) gives the rows in dataset order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor


class OrderedParquetSink(Datasink[None]):
    """Write every write task's blocks, in order, to ``<folder>/part-<task index>.parquet``.

    ``folder``: a local path (made absolute here, on the driver) or a URI pyarrow opens (``s3://...``).
    """

    def __init__(self, folder: str):
        self.uri = folder.rstrip("/") if "://" in folder else Path(folder).resolve().as_posix()

    def on_write_start(self, schema: Any = None) -> None:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(self.uri)
        filesystem.create_dir(path, recursive=True)

    def write(self, blocks: Iterable[Block], ctx: Any) -> None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return
        filesystem, path = pyarrow.fs.FileSystem.from_uri(f"{self.uri}/part-{ctx.task_idx:06d}.parquet")
        with pq.ParquetWriter(path, tables[0].schema, filesystem=filesystem) as writer:
            for table in tables:
                writer.write_table(table)

    def get_name(self) -> str:
        return "OrderedParquet"
