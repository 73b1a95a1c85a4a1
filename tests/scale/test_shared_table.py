"""A memory-mapped (external-data) table is shared by the actors of one node: each actor's anonymous
memory grows by a small fraction of the table while its file-backed memory holds all of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from embed_runtime.scale import Predictor

from .helpers import bench, ray

TABLE_MIB = 256


def test_two_actors_share_one_external_table(ray_cluster: str, tmp_path: Path) -> None:
    try:
        result = bench.shared_table(tmp_path, TABLE_MIB, actors=2)
    finally:
        (tmp_path / "shared.onnx.data").unlink()  # pytest keeps the last runs' folders: not 256 MiB each
    table = result["table_bytes"]
    assert table == TABLE_MIB << 20
    assert len(result["actors"]) == 2  # both actors ran batches
    for actor in result["actors"]:
        assert actor["file"] > 0.9 * table  # every page of the table was looked up, through the mapping
        assert actor["anonymous"] < table / 8  # but no private copy of it was made


def test_external_table_gives_the_right_rows(ray_cluster: str, tmp_path: Path) -> None:
    model = bench.gather_model(tmp_path / "small.onnx", 1000, 8)
    ids = [[1, 2, 3], [999, 0, 5], [7, 7, 7]]
    ds = ray.data.from_arrow(pa.table({"ids": ids})).map_batches(
        Predictor, fn_constructor_args=(str(model),), concurrency=1, batch_format="numpy"
    )
    sums = np.stack(ds.to_pandas()["sum"].to_list())
    np.testing.assert_array_equal(sums, np.repeat(np.sum(ids, axis=1, dtype=np.float32)[:, None], 8, axis=1))
