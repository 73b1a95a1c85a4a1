"""The full performance comparison of issue 5, with TensorFlow: ``python benchmarks/compare.py``.

Keras/TensorFlow, Keras's own ONNX export, raw onnxruntime, our runtime, numpy and the memory-copy floor,
side by side in one process; then cold starts, streaming and export size.

    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/compare.py            # full run, < 10 minutes on 2 cores
    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/compare.py --quick    # a short run with small budgets

It needs the ``export`` and ``bench`` extras (TensorFlow, Keras 3, tf2onnx, onnx, matplotlib). It builds
a 50,000x128 and a 1,000,000x64 Keras 3 Embedding model (random tables), exports each with our exporter
and with Keras's ``model.export(format="onnx")``, measures, writes ``docs/benchmarks.md`` and
``docs/benchmarks.png`` and prints the Markdown. Every contender returns numpy arrays; their outputs are
checked equal before timing. Timing uses :func:`embed_runtime.timing.measure` (interleaved rounds,
warm-up, medians and min-max per call), the same as ``embed-runtime bench``, and its contender names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import onnxruntime as ort

import embed_runtime
from embed_runtime import timing
from embed_runtime.tensors import numpy_dtype

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from compare_children import run_child  # noqa: E402
from compare_report import write_report  # noqa: E402

PREDICT = "Keras predict"
CALL = "Keras model(ids)"
TF_FUNCTION = "tf.function"
KERAS_ONNX = "Keras ONNX export in ort"
OURS_ORT = timing.ORT_RUN + " (our graph)"
CONTENDERS = (
    PREDICT,
    CALL,
    TF_FUNCTION,
    KERAS_ONNX,
    OURS_ORT,
    timing.RT_RUN,
    timing.RT_NO_BINDING,
    timing.RT_OUT,
    timing.VALIDATION,
    timing.NP_TAKE,
    timing.FLOOR,
)

SMALL, BIG = ("50k x 128", 50_000, 128), ("1M x 64", 1_000_000, 64)
PATH_KEYS = ("keras_path", "ours_path", "keras_onnx_path")
CASES = ((SMALL, 1, 16), (SMALL, 32, 10), (SMALL, 4096, 128), (BIG, 1024, 128))


def build_keras(rows: int, dim: int, seed: int) -> Any:
    """A Keras 3 model ``Input(int64, (batch, None)) -> Embedding(rows, dim)``, called once."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(None,), dtype="int64", name="input_ids")
    emb = keras.layers.Embedding(rows, dim, name="embedding")
    model = keras.Model(ids, emb(ids), name=f"embedding_{rows}x{dim}")
    model(np.ones((1, 4), dtype=np.int64))
    return model


def _export_versions() -> dict[str, str]:
    from importlib.metadata import version

    from exporters import EXPORTER_VERSION

    return {p: version(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx")} | {
        "exporter": EXPORTER_VERSION
    }


def _onnx_bytes(path: Path) -> int:
    """Size of an ONNX file plus its external data files (``<name>.data`` and the like beside it)."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".*"))


def export_both(rows: int, dim: int, seed: int, cache: Path, fresh: bool) -> tuple[Any, dict[str, Any]]:
    """The Keras model and its two exports (``.keras``, ours, Keras's ``model.export``) with export times,
    node counts and sizes. Exports are cached in ``cache`` per size and versions (the 1M x 64 exports take
    minutes and over 10 GB of memory); ``fresh`` redoes them. Returns the model and the export record."""
    import keras
    import onnx

    from exporters import export_keras

    folder = cache / f"{rows}x{dim}-seed{seed}"
    record_path = folder / "export.json"
    versions = _export_versions()
    if not fresh and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["versions"] == versions and all(Path(record[k]).is_file() for k in PATH_KEYS):
            record["cached"] = True
            record["ours"]["bytes"] = _onnx_bytes(Path(record["ours_path"]))
            return keras.models.load_model(record["keras_path"]), record
    folder.mkdir(parents=True, exist_ok=True)
    model = build_keras(rows, dim, seed)
    keras_path, ours, theirs = folder / "model.keras", folder / "model.onnx", folder / "keras_export.onnx"
    model.save(keras_path)
    report = export_keras(model, ours)
    start = time.perf_counter()
    model.export(str(theirs), format="onnx", verbose=False)
    keras_seconds = time.perf_counter() - start
    nodes = [n.op_type for n in onnx.load(str(theirs), load_external_data=False).graph.node]
    record = {
        "keras_path": str(keras_path),
        "ours_path": str(ours),
        "keras_onnx_path": str(theirs),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "ours": {
            "seconds": report.seconds,
            "nodes": report.node_count,
            "bytes": _onnx_bytes(ours),
            "ops": report.op_counts,
        },
        "keras": {
            "seconds": keras_seconds,
            "nodes": len(nodes),
            "bytes": theirs.stat().st_size,
            "ops": {op: nodes.count(op) for op in dict.fromkeys(nodes)},
        },
    }
    record_path.write_text(json.dumps(record, indent=2))
    record["cached"] = False
    return model, record


def _ort_session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()  # onnxruntime's defaults, as a user would have them
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def contenders_for(model: Any, paths: dict[str, Any], ids: np.ndarray) -> dict[str, Callable[[], object]]:
    """The zero-argument calls to time for one model and one ids array, outputs checked equal first."""
    import tensorflow as tf

    rt = embed_runtime.load(paths["ours_path"], providers="cpu")
    plain = embed_runtime.load(
        paths["ours_path"], providers="cpu", options=embed_runtime.RuntimeOptions(io_binding=False)
    )
    ours, theirs = _ort_session(paths["ours_path"]), _ort_session(paths["keras_onnx_path"])
    their_input = theirs.get_inputs()[0]
    their_ids = ids.astype(numpy_dtype(their_input.type))
    table = np.ascontiguousarray(model.get_layer("embedding").embeddings.numpy())
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None), tf.int64)])
    out_name = rt.outputs[0].name
    out = {out_name: np.empty((*ids.shape, table.shape[1]), dtype=table.dtype)}
    src, dst = np.ones(out[out_name].nbytes, np.uint8), np.zeros(out[out_name].nbytes, np.uint8)
    calls: dict[str, Callable[[], object]] = {
        PREDICT: lambda: model.predict(ids, verbose=0),
        CALL: lambda: np.asarray(model(ids, training=False)),
        TF_FUNCTION: lambda: fn(ids).numpy(),
        KERAS_ONNX: lambda: theirs.run(None, {their_input.name: their_ids})[0],
        OURS_ORT: lambda: ours.run(None, {rt.inputs[0].name: ids})[0],
        timing.RT_RUN: lambda: rt.run(ids)[out_name],
        timing.RT_NO_BINDING: lambda: plain.run(ids)[out_name],
        timing.RT_OUT: lambda: rt.run(ids, out=out)[out_name],
        timing.NP_TAKE: lambda: np.take(table, ids, axis=0),
    }
    expected = np.take(table, ids, axis=0)
    for name, call in calls.items():
        got = np.asarray(call())
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-6):
            raise AssertionError(f"{name} does not return table[ids] (shape {got.shape})")
    calls[timing.VALIDATION] = lambda: rt.prepare(ids)
    calls[timing.FLOOR] = lambda: np.copyto(dst, src)
    return calls


def latency(models: dict[str, Any], exports: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Time every contender on every case; returns one record per case."""
    rng = np.random.default_rng(0)
    records = []
    for (label, rows, dim), batch, seq in CASES:
        if quick and batch * seq > 65_536:
            batch = 512
        ids = rng.integers(1, rows, size=(batch, seq), dtype=np.int64)
        calls = contenders_for(models[label], exports[label], ids)
        _log(f"timing {label} {batch}x{seq} ...")
        stats = timing.measure(calls, budget=0.15 if quick else 1.2, rounds=3 if quick else 5, min_samples=3)
        records.append(
            {
                "table": label,
                "rows": rows,
                "dim": dim,
                "shape": f"{batch}x{seq}",
                "output_bytes": batch * seq * dim * 4,
                "stats": {n: stats[n].__dict__ for n in CONTENDERS},
            }
        )
        del calls
    return records


def cold_starts(exports: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Fresh processes to first result, ours vs TensorFlow, per model (median of runs, one untimed)."""
    results = []
    repeats = 1 if quick else 3
    for (label, rows, dim), batch, seq in ((SMALL, 1, 16), (BIG, 1, 16)):
        paths = exports[label]
        row: dict[str, Any] = {
            "table": label,
            "shape": f"{batch}x{seq}",
            "table_bytes": rows * dim * 4,
            "output_bytes": batch * seq * dim * 4,
        }
        for key, mode, path in (
            ("rt", "rt-cold", paths["ours_path"]),
            ("tf", "tf-cold", paths["keras_path"]),
        ):
            run_child([mode, path, str(batch), str(seq)])  # warms the page cache
            runs = [run_child([mode, path, str(batch), str(seq)]) for _ in range(repeats)]
            runs.sort(key=lambda r: r["wall_s"])
            row[key] = runs[len(runs) // 2] | {
                "wall_all": [r["wall_s"] for r in runs],
                "peak_all": [r["peak_rss_mb"] for r in runs],
            }
        results.append(row)
    return results


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, load and library versions."""
    from importlib.metadata import version

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown",
    )
    mem = next(
        (
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem / 2**20:.1f} GiB",
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    info["embed_runtime source"] = _git_state()
    for pkg in ("numpy", "onnxruntime", "tensorflow", "keras", "tf2onnx", "onnx", "embed-runtime"):
        try:
            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = "not installed"
    return info


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/embed-runtime/bench`` (``~/.cache/...``): where exported models are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embed-runtime" / "bench"


def _git_state() -> str:
    """The commit the runtime was measured at, flagged when ``embed_runtime/`` has uncommitted changes."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "embed_runtime")
    return head + (" + uncommitted changes in embed_runtime/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    """Build, export, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets and batches (a smoke run)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md/.png go")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where exported models are kept")
    parser.add_argument("--fresh", action="store_true", help="export again even when cached exports fit")
    parser.add_argument("--stream-sequences", type=int, default=1_000_000, help="sequences streamed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    models, exports = {}, {}
    for (label, rows, dim), seed in ((SMALL, 1), (BIG, 2)):
        _log(f"building and exporting {label} (cache {args.cache}) ...")
        models[label], exports[label] = export_both(rows, dim, seed, args.cache, args.fresh)
    partial = args.cache / "results.partial.json"
    records = latency(models, exports, args.quick)
    partial.write_text(json.dumps(records, indent=2))
    del models
    _log("cold starts ...")
    cold = cold_starts(exports, args.quick)
    _log("streaming ...")
    sequences = min(args.stream_sequences, 100_000) if args.quick else args.stream_sequences
    streaming = run_child(["stream", exports[SMALL[0]]["ours_path"], str(sequences), "32", "0"], timeout=600)
    results = {
        "machine": machine(),
        "latency": records,
        "cold_start": cold,
        "streaming": streaming,
        "exports": exports,
        "quick": args.quick,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": time.perf_counter() - started,
    }
    out = args.cache / ("results.quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    text = write_report(results, args.docs)
    print(text)
    _log(
        f"wrote {args.docs / 'benchmarks.md'}, {args.docs / 'benchmarks.png'}, {out} in {results['seconds']:.0f} s"
    )
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = ["CONTENDERS", "main"]

if __name__ == "__main__":
    sys.exit(main())
