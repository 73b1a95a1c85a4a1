"""Batch inference on Ray Data (issue 15): ``embed-runtime batch`` against one process, 1 vs 2 actors, and
a memory-mapped table shared by two actors. Rewrites the figures section of ``docs/scale-out.md``.

For ``--model`` (the classifier: little compute per row) and ``--compute-model`` (the recurrent model),
on ``--rows`` x ``--length`` random ids in one Parquet file (row groups of 64 Ki rows, a ``key`` column),
every contender once per round (order rotated, medians): ``one process, compute`` (``run_batched`` on
the ids in memory), ``one process, same job`` (Parquet in, ``run_batched``, Parquet out) and
``embed-runtime batch`` in a subprocess with its own local Ray (1 actor at all rows and at a tenth: fixed
start-up and marginal rate; for ``--model`` also 2 actors at 0.5 CPU), each actor's memory sampled from
``/proc/<pid>/smaps_rollup``, the first output checked against one process. Last, :func:`shared_table`.
The figures and the doc's section are written by ``benchmarks/ray_batch_report.py``.

    python benchmarks/ray_batch.py --rounds 3                     # 1,000,000 x 32, both models, the doc
    python benchmarks/ray_batch.py --rows 100000 --rounds 1 --compute-model '' --no-doc

Needs the ``[ray]`` extra and ``onnx``; ``tests/scale`` imports :func:`gather_model`,
:class:`MemoryProbe` and :func:`memory` from here. Writes to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""No usage reporting; a local Ray on loopback only (Ray's switch for a one-machine cluster, read when Ray
is imported: hence set before the imports below)."""
os.environ.update(RAY_ENV)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx.external_data_helper import set_external_data  # noqa: E402

import embed_runtime  # noqa: E402
from embed_runtime.contract import EmbeddingInfo, ModelMetadata  # noqa: E402
from embed_runtime.scale import Predictor  # noqa: E402
from embed_runtime.scale.columns import arrow_ids, arrow_rows  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report beside this script, run as a file too
from ray_batch_report import (  # noqa: E402
    BATCH,
    MIB,
    ONE_ACTOR,
    ONE_COMPUTE,
    ONE_JOB,
    SMALL,
    TWO_ACTORS,
    Runs,
    figures,
    write_doc,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = "MapBatches(Predictor)"
Contender = Callable[[int], dict[str, Any]]
"""One timed run (its round as argument): ``rows``, ``s`` and what else it measured."""


def memory(pid: int | str = "self") -> dict[str, int]:
    """Bytes of ``rss``, ``anonymous``, ``file`` (rss - anonymous) and ``pss_file`` of a process."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) * 1024
    rss, anonymous = fields["Rss"], fields["Anonymous"]
    return {
        "rss": rss,
        "anonymous": anonymous,
        "file": rss - anonymous,
        "pss_file": fields.get("Pss_File", 0),
    }


def gather_model(path: Path, rows: int, dim: int, *, external: bool = True) -> Path:
    """``sum = ReduceSum(Gather(table, ids), axis 1)``: ids ``(batch, seq)`` of any length, no padding (id
    0 is a real row), ``sum`` ``(batch, dim)``. Row ``i`` of the float32 table is all ``i``, so ``sum`` is
    each row's id total. ``external``: the table is ONNX external data in ``<path>.data`` at offset 0,
    page-aligned as onnxruntime needs to map it (see ``exporters.large.ALIGNMENT``)."""
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], dim, axis=1)
    if external:
        table.tofile(path.with_name(path.name + ".data"))
        init = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, dim], raw_data=b"")
        set_external_data(init, location=path.name + ".data", offset=0, length=table.nbytes)
        init.data_location = TensorProto.EXTERNAL
        init.ClearField("raw_data")
    else:
        init = onnx.numpy_helper.from_array(table, "table")
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("ReduceSum", ["rows", "axes"], ["sum"], keepdims=0),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph(nodes, "gather_sum", [ids], [out], [init, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = EmbeddingInfo("table", ("ids",), rows, dim, False, None, None)
    helper.set_model_props(model, ModelMetadata(embeddings=(info,)).to_props())
    onnx.save(model, str(path))
    return path


class MemoryProbe(Predictor):
    """A :class:`Predictor` that adds its process's memory to every batch: ``pid``, and ``before_*``
    (before the model loads) and ``after_*`` (after this batch) for each field of :func:`memory`."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.before = memory()
        super().__init__(*args, **kwargs)

    def __call__(self, batch: Any) -> Any:
        out = super().__call__(batch)
        assert isinstance(out, pa.Table), "MemoryProbe takes batch_format='pyarrow'"
        after, rows = memory(), out.num_rows
        out = out.append_column("pid", pa.array([os.getpid()] * rows))
        for key in self.before:
            out = out.append_column(f"before_{key}", pa.array([self.before[key]] * rows))
            out = out.append_column(f"after_{key}", pa.array([after[key]] * rows))
        return out


def page_ids(rows: int, length: int) -> np.ndarray:
    """Ids touching every 4 KiB page of a ``rows`` x 128 float32 table (every 8th row), ``length`` a row."""
    ids = np.arange(0, rows, 8, dtype=np.int64)
    return ids[: len(ids) // length * length].reshape(-1, length)


def shared_table(folder: Path, table_mib: int, actors: int = 2) -> dict[str, Any]:
    """Run :class:`MemoryProbe` on ``actors`` actors over a ``table_mib`` external table; per actor, the
    growth of anonymous and file-backed memory and the final ``Pss_File``."""
    rows, dim = table_mib * MIB // (128 * 4), 128
    path = gather_model(folder / "shared.onnx", rows, dim)
    ids = page_ids(rows, 64)
    blocks = [pa.table({"ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), 64)})] * 8
    ds = ray.data.from_arrow(blocks).map_batches(
        MemoryProbe,
        fn_constructor_args=(str(path),),
        fn_constructor_kwargs={"providers": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        batch_size=256,
        batch_format="pyarrow",
        num_cpus=1,
    )
    table = ds.to_arrow_refs()
    result = pa.concat_tables(ray.get(table)).drop_columns(["sum"]).to_pylist()
    last = {row["pid"]: row for row in result}  # each actor's last batch
    per_actor = [
        {key: row[f"after_{key}"] - row[f"before_{key}"] for key in ("anonymous", "file")}
        | {"pss_file": row["after_pss_file"], "anonymous_total": row["after_anonymous"]}
        for row in last.values()
    ]
    return {"table_bytes": rows * dim * 4, "actors": per_actor}


def write_ids(path: Path, rows: int, length: int, high: int) -> np.ndarray:
    """``rows`` x ``length`` random ids in ``[1, high)`` as a Parquet list column ``token_ids``."""
    ids = np.random.default_rng(0).integers(1, high, size=(rows, length), dtype=np.int64)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * length)
    column = pa.ListArray.from_arrays(offsets, pa.array(ids.ravel()))
    pq.write_table(pa.table({"key": np.arange(rows), "token_ids": column}), path, row_group_size=1 << 16)
    return ids


def one_process_job(rt: embed_runtime.Runtime, source: Path, target: Path) -> None:
    """The command's job in one process: Parquet in, ``run_batched``, the same columns out."""
    table = pq.read_table(source)
    ids = arrow_ids(table.column("token_ids"))
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in rt.run_batched(ids, batch_size=BATCH, progress=False):
        for name, values in chunk.items():
            parts.setdefault(name, []).append(values)
    shapes = {o.name: o.shape for o in rt.outputs}
    columns = {"key": table.column("key")}
    columns |= {name: arrow_rows(np.concatenate(v), shapes[name]) for name, v in parts.items()}
    pq.write_table(pa.table(columns), target)


@contextmanager
def actor_sampler(every: float = 0.2) -> Iterator[dict[int, dict[str, int]]]:
    """Peak memory of every Ray Data actor process (its title names the predictor) while in the block."""
    peaks: dict[int, dict[str, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            for entry in os.scandir("/proc"):
                try:
                    if entry.name.isdigit() and WORKER in Path(f"/proc/{entry.name}/cmdline").read_text():
                        now = memory(entry.name)
                        peak = peaks.setdefault(int(entry.name), now)
                        peaks[int(entry.name)] = {k: max(v, peak[k]) for k, v in now.items()}
                except OSError:
                    continue

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def run_batch_command(model: str, source: Path, target: Path, extra: list[str]) -> dict[str, Any]:
    """``embed-runtime batch`` in a subprocess: the command's figure, its wall time, actor peaks."""
    cmd = [sys.executable, "-m", "embed_runtime.cli", "batch", model, "--input", str(source)]
    cmd += ["--output", str(target), "--keep", "key", "--batch-size", str(BATCH), *extra]
    start = time.perf_counter()
    with actor_sampler() as peaks:
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | RAY_ENV, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    found = re.search(r"wrote ([\d,]+) rows .* in ([\d.]+) s", done.stdout)
    if found is None:
        raise SystemExit(f"no summary line in the command's output:\n{done.stdout[-2000:]}")
    rows = int(found.group(1).replace(",", ""))
    return {"rows": rows, "pipeline_s": float(found.group(2)), "wall_s": wall, "actors": list(peaks.values())}


def check_output(target: Path, expected: dict[str, np.ndarray]) -> None:
    """The command's output, in key order, equals the single-process outputs."""
    table = pq.read_table(target)
    keys = table.column("key").to_numpy()
    if not np.array_equal(keys, np.arange(len(keys))):
        raise SystemExit("the command's output is not in input order")
    for name, values in expected.items():
        got = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if not np.array_equal(got.reshape(values.shape), values):
            raise SystemExit(f"output {name!r} of the command differs from one process")


def rounds(contenders: dict[str, Contender], count: int) -> Runs:
    """Every contender once per round, the order rotated each round."""
    names, results = list(contenders), Runs((name, []) for name in contenders)
    for i in range(count):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            results[name].append(contenders[name](i))
            print(f"round {i + 1}: {name}: {results[name][-1]['s']:.2f} s", flush=True)
    return results


def contenders(args: argparse.Namespace, model: str, folder: Path, scaling: bool) -> dict[str, Contender]:
    """One model's contenders on its own ids (``model: contender`` names); ``scaling`` adds 2 actors.
    The first 1-actor run's output is checked against one process."""
    rt = embed_runtime.load(ROOT / model, providers="cpu")
    stem, high = Path(model).parent.name, rt.inputs[0].input_dim or 2
    source, small = folder / f"{stem}.parquet", folder / f"{stem}-small.parquet"
    ids = write_ids(source, args.rows, args.length, high)
    write_ids(small, args.rows // 10, args.length, high)
    expected = rt.run(ids)

    def timed(run: Callable[[], Any]) -> dict[str, Any]:
        start = time.perf_counter()
        run()
        return {"s": time.perf_counter() - start, "rows": args.rows}

    def command(data: Path, extra: list[str]) -> Contender:
        def run(i: int) -> dict[str, Any]:
            target = folder / f"out-{data.stem}-{len(extra)}-{i}"
            result = run_batch_command(model, data, target, extra)
            if i == 0 and data == source:
                check_output(target, expected)
            return result | {"s": result["pipeline_s"]}

        return run

    found = {
        ONE_COMPUTE: lambda i: timed(lambda: list(rt.run_batched(ids, BATCH, progress=False))),
        ONE_JOB: lambda i: timed(lambda: one_process_job(rt, source, folder / f"one-{stem}-{i}.parquet")),
        ONE_ACTOR: command(source, ["--concurrency", "1"]),
        TWO_ACTORS: command(source, ["--concurrency", "2", "--actor-cpus", "0.5"]),
        SMALL: command(small, ["--concurrency", "1"]),
    }
    if not scaling:
        del found[TWO_ACTORS]
    return {f"{model}: {name}": run for name, run in found.items()}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the figures, and write them into docs/scale-out.md (unless ``--no-doc``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    add = parser.add_argument
    add("--model", default="models/classifier/model.onnx", help="a model, relative to the repo")
    add("--compute-model", default="models/recurrent/model.onnx",
        help="a second model whose own compute weighs more ('' for none)")  # fmt: skip
    add("--rows", type=int, default=1_000_000, help="sequences (default 1,000,000)")
    add("--length", type=int, default=32, help="ids per sequence (default 32)")
    add("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    add("--table-mib", type=int, default=256, help="the shared table's size (default 256)")
    add("--json", default=None, help="also write the measurements here")
    add("--no-doc", action="store_true", help="do not rewrite docs/scale-out.md")
    args = parser.parse_args(argv)
    args.load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ray_batch.") as tmp:
        folder = Path(tmp)
        everyone = contenders(args, args.model, folder, scaling=True)
        if args.compute_model:
            everyone |= contenders(args, args.compute_model, folder, scaling=False)
        runs = rounds(everyone, args.rounds)
        for name in [n for n in runs if n.endswith((ONE_ACTOR, TWO_ACTORS))]:
            runs[f"{name}, whole command"] = [r | {"s": r["wall_s"], "actors": []} for r in runs[name]]
        ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            shared = shared_table(folder, args.table_mib)
        finally:
            ray.shutdown()
    text = figures(args, runs, shared)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "shared": shared}, indent=1))
    if not args.no_doc:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
