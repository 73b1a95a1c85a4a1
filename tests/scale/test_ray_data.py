"""Through Ray Data and ``embed-runtime batch`` on the session's local Ray: results equal ``rt.run`` on the
same rows, in order; a bad row fails the job naming it, or is routed aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embed_runtime
from embed_runtime import cli
from embed_runtime.scale import Predictor
from embed_runtime.scale.sink import OrderedParquetSink

from .helpers import CLASSIFIER, ROOT, ray

ROWS = 60


def ragged_rows(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=rng.integers(1, 9)).tolist() for _ in range(count)]


def dataset(rows: list[list[int]] | list[object], blocks: int = 4) -> ray.data.Dataset:
    """``user`` (0, 1, ...) and ``token_ids`` in ``blocks`` blocks, so that two actors share the work."""
    table = pa.table({"user": np.arange(len(rows)), "token_ids": rows})
    size = -(-len(rows) // blocks)
    return ray.data.from_arrow([table.slice(i, size) for i in range(0, len(rows), size)])


def check_against_runtime(records: list[dict[str, object]], rows: list[list[int]]) -> None:
    """Rows in order; each row's mask is its own ids then padding; probabilities equal ``rt.run`` on the
    same rows (a batch of other rows may change the last bit of float sums, hence the tolerance)."""
    want = embed_runtime.load(CLASSIFIER, providers="cpu").run(rows)
    assert [r["user"] for r in records] == list(range(len(rows)))
    for row, record in zip(rows, records):
        mask = np.asarray(record["mask"]).tolist()
        assert mask[: len(row)] == [True] * len(row) and not any(mask[len(row) :])
    probability = np.array([np.asarray(r["probability"]) for r in records])
    np.testing.assert_allclose(probability, want["probability"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["numpy", "pandas", "pyarrow"])
def test_map_batches_gives_what_rt_run_gives_in_order(ray_cluster: str, fmt: str) -> None:
    rows = ragged_rows(ROWS)
    ds = dataset(rows).map_batches(
        Predictor,
        fn_constructor_args=(CLASSIFIER,),
        fn_constructor_kwargs={"providers": "cpu", "keep": ["user"]},
        concurrency=2,
        batch_size=7,
        batch_format=fmt,
    )
    check_against_runtime(ds.take_all(), rows)


def test_a_bad_row_fails_the_job_naming_it(ray_cluster: str) -> None:
    rows: list[object] = ragged_rows(ROWS)
    rows[23] = [4, 77]
    ds = dataset(rows).map_batches(
        Predictor,
        fn_constructor_args=(CLASSIFIER,),
        fn_constructor_kwargs={"providers": "cpu", "key": "user"},
        concurrency=1,
        batch_size=8,
        batch_format="pyarrow",
    )
    with pytest.raises(
        Exception, match=r"row \d of a batch of \d+ rows \(user=23\): input 'token_ids': id 77"
    ):
        ds.materialize()


def test_bad_rows_routed_aside_and_filtered(ray_cluster: str) -> None:
    rows: list[object] = ragged_rows(ROWS)
    for bad in (5, 41):
        rows[bad] = [1, -3]
    ds = dataset(rows).map_batches(
        Predictor,
        fn_constructor_args=(CLASSIFIER,),
        fn_constructor_kwargs={"providers": "cpu", "key": "user", "on_error": "column"},
        concurrency=2,
        batch_size=8,
        batch_format="pyarrow",
    )
    ds = ds.materialize()
    aside = ds.filter(expr="is_not_null(error)").take_all()
    assert [r["user"] for r in aside] == [5, 41]
    assert all("id -3 at position [0, 1]" in r["error"] for r in aside)
    good = ds.filter(expr="is_null(error)").take_all()
    assert [r["user"] for r in good] == [i for i in range(ROWS) if i not in (5, 41)]
    want = embed_runtime.load(CLASSIFIER, providers="cpu").run(
        [r for i, r in enumerate(rows) if i not in (5, 41)]
    )
    np.testing.assert_allclose(np.array([r["probability"] for r in good]), want["probability"], atol=1e-6)


def write_ids(folder: Path, rows: list[object]) -> Path:
    path = folder / "ids.parquet"
    pq.write_table(pa.table({"user": np.arange(len(rows)), "ids": rows}), path, row_group_size=16)
    return path


def test_command_against_the_cluster_by_address(ray_cluster: str, tmp_path: Path) -> None:
    rows = ragged_rows(ROWS, seed=1)
    source, target = write_ids(tmp_path, rows), tmp_path / "out"
    command = [sys.executable, "-m", "embed_runtime.cli", "batch", CLASSIFIER, "--input", str(source)]
    command += ["--output", str(target), "--ray-address", ray_cluster, "--column", "token_ids=ids"]
    command += ["--key", "user", "--batch-size", "16", "--providers", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {ROWS} rows to {target}" in done.stdout and "2 actors" in done.stdout
    check_against_runtime(pq.read_table(target).to_pylist(), rows)


def test_command_bad_row_is_one_line(
    ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[object] = ragged_rows(ROWS)
    rows[17] = [3, 50]
    source = write_ids(tmp_path, rows)
    argv = ["batch", CLASSIFIER, "--input", str(source), "--output", str(tmp_path / "out")]
    status = cli.main([*argv, "--column", "token_ids=ids", "--key", "user", "--concurrency", "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert last.startswith("embed-runtime batch: error: row ")
    assert "(user=17): input 'token_ids': id 50 at position [" in last and "[0, 50)" in last


def test_command_refuses_before_running(
    ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_ids(tmp_path, ragged_rows(4))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_text("")
    cases = {
        ("--output", str(tmp_path / "full")): "exists and is not an empty folder",
        ("--input", str(tmp_path / "missing.parquet")): "no such file or folder",
        (
            "--concurrency",
            "3",
        ): "3 actor(s) x 1 CPUs leave no CPU for reading and writing in a Ray cluster of 3",
        ("--column", "token=ids"): "unknown input(s) 'token'",
        ("--batch-size", "0"): "--batch-size must be an integer >= 1, got 0",
        ("--actor-cpus", "0"): "--actor-cpus must be above 0, got 0",
    }
    for extra, message in cases.items():
        argv = ["batch", CLASSIFIER, "--input", str(source), "--output", str(tmp_path / "new"), *extra]
        assert cli.main(argv if "--column" in extra else [*argv, "--column", "token_ids=ids"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("embed-runtime batch: error: ") and message in err[-1]
    assert not (tmp_path / "new").exists()


def test_command_writes_rows_in_order(ray_cluster: str, tmp_path: Path) -> None:
    # Ray's own write_parquet lets pyarrow's threaded writer reorder a file's record batches (here about
    # 200 batches of 256 rows in one file: out of order in 2 runs out of 3 before OrderedParquetSink)
    rows = 50_000
    ids = np.random.default_rng(2).integers(1, 50, size=(rows, 4))
    column = pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), 4)
    pq.write_table(pa.table({"user": np.arange(rows), "token_ids": column}), tmp_path / "ids.parquet")
    argv = ["batch", CLASSIFIER, "--input", str(tmp_path / "ids.parquet"), "--output", str(tmp_path / "out")]
    assert cli.main([*argv, "--keep", "user", "--batch-size", "256", "--concurrency", "1"]) == 0
    out = pq.read_table(tmp_path / "out")
    np.testing.assert_array_equal(out.column("user").to_numpy(), np.arange(rows))
    want = embed_runtime.load(CLASSIFIER, providers="cpu").run(ids)["probability"]
    np.testing.assert_allclose(np.array(out.column("probability").to_pylist()), want, rtol=0, atol=1e-6)


def test_sink_names_files_in_task_order(tmp_path: Path) -> None:
    sink = OrderedParquetSink(str(tmp_path / "out"))
    sink.on_write_start()
    for task in (2, 0, 1):  # tasks may finish in any order; the names keep the dataset's order
        blocks = [pa.table({"row": [task * 10 + i]}) for i in range(3)]
        sink.write(blocks, SimpleNamespace(task_idx=task))
    sink.write([pa.table({"row": pa.array([], pa.int64())})], SimpleNamespace(task_idx=3))  # no empty file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"part-00000{i}.parquet" for i in range(3)
    ]
    assert pq.read_table(tmp_path / "out").column("row").to_pylist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_command_routes_bad_rows_to_the_error_column(ray_cluster: str, tmp_path: Path) -> None:
    rows: list[object] = ragged_rows(20)
    rows[7] = [2, 99]
    source, target = write_ids(tmp_path, rows), tmp_path / "out"
    argv = ["batch", CLASSIFIER, "--input", str(source), "--output", str(target), "--column", "token_ids=ids"]
    assert cli.main([*argv, "--key", "user", "--on-error", "column", "--concurrency", "1"]) == 0
    out = pq.read_table(target)
    errors = out.column("error").to_pylist()
    assert out.column("user").to_pylist() == list(range(20))
    assert [i for i, e in enumerate(errors) if e is not None] == [7] and "id 99" in errors[7]


def test_importing_the_runtime_imports_no_ray() -> None:
    code = "import sys, embed_runtime, embed_runtime.cli; print(*{m.split('.')[0] for m in sys.modules})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "embed_runtime" in done.stdout.split()
    assert not {"ray", "pyarrow", "pandas"} & set(done.stdout.split())


def test_command_on_its_own_local_ray_reads_a_folder_in_order(tmp_path: Path) -> None:
    # without an address the command starts a local Ray and reads with Ray Data's first Parquet reader
    # (scale._local_read); the rows of several files and row groups come back in order
    rows = ragged_rows(90, seed=3)
    (tmp_path / "ids").mkdir()
    for i, start in enumerate(range(0, 90, 30)):
        part = pa.table({"user": np.arange(start, start + 30), "ids": rows[start : start + 30]})
        pq.write_table(part, tmp_path / "ids" / f"{i}.parquet", row_group_size=8)
    command = [
        sys.executable,
        "-m",
        "embed_runtime.cli",
        "batch",
        CLASSIFIER,
        "--input",
        str(tmp_path / "ids"),
    ]
    command += ["--output", str(tmp_path / "out"), "--column", "token_ids=ids", "--key", "user"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [*command, "--batch-size", "16"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 90 rows" in done.stdout
    check_against_runtime(pq.read_table(tmp_path / "out").to_pylist(), rows)
