"""Measure the big-table export path and memory-mapped loading (issue 7).

For each table size, one subprocess builds a Keras 3 ``Sequential([Input, Embedding(rows, dim)])`` with a
cheap ``zeros`` initializer filled in row chunks with a closed-form pattern, then exports it with
``export_keras`` (default threshold: the table goes to ``<model>.onnx.<content hash>.data``). The export's own peak RSS
is measured apart from model construction: the kernel's high-water mark (``VmHWM``) is reset through
``/proc/self/clear_refs`` just before ``export_keras`` and read right after it (a 20 ms RSS sampler
cross-checks it). A second subprocess times ``embed_runtime.load`` and reads its RSS before the first
request, then checks the rows it returns (first and last rows included) against the closed-form values.

    python benchmarks/large_tables.py                    # 0.3, 1.2 and 3 GB tables
    python benchmarks/large_tables.py --sizes 0.3 --json out.json
    python benchmarks/large_tables.py --keras-export 0.3 # also time Keras's own model.export(format="onnx")

Needs the export extra and psutil; writes to a temporary folder (``--dir``) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 128
CHUNK_ROWS = 1 << 17


def pattern(rows: np.ndarray, dim: int) -> np.ndarray:
    """Closed-form table values for ``rows``: 24-bit hashes as float32, exact, different in every row."""
    r = rows.astype(np.uint64)[:, None]
    j = np.arange(dim, dtype=np.uint64)[None, :]
    bits = (r * np.uint64(2654435761) + j * np.uint64(40503) + (r >> np.uint64(7))) & np.uint64(0xFFFFFF)
    return (bits.astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler:
    """Polls RSS every 20 ms in a thread; ``peak`` is the largest value seen."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.02)

    def _sample(self) -> None:
        info = self.process.memory_info()
        self.peak = max(self.peak, info.rss)
        self.peak_anon = max(self.peak_anon, info.rss - info.shared)  # shared: file-backed pages

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def child_export(rows: int, dim: int, out: Path, keras_export: bool, copy_on_read: bool) -> dict[str, Any]:
    """Build the model, then export it (ours, or Keras's own ``model.export``); returns measurements."""
    import keras
    import psutil

    from exporters import export_keras

    proc = psutil.Process()
    result: dict[str, Any] = {"rows": rows, "dim": dim, "table_bytes": rows * dim * 4}
    result["rss_after_imports"] = proc.memory_info().rss
    t = time.perf_counter()
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int64"),
            keras.layers.Embedding(rows, dim, embeddings_initializer="zeros"),
        ]
    )
    variable = model.layers[0]._embeddings.value
    values = np.empty((rows, dim), np.float32)
    for start in range(0, rows, CHUNK_ROWS):
        values[start : start + CHUNK_ROWS] = pattern(np.arange(start, min(rows, start + CHUNK_ROWS)), dim)
    variable.assign(values)  # like loading saved weights: the variable stays in TF's normal mode
    del values
    if copy_on_read:  # like sparse training updates: TF now copies the whole table on every dense read
        variable[0:1].assign(variable[0:1])
    result["copy_on_read"] = copy_on_read
    result["build_seconds"] = time.perf_counter() - t
    result["build_peak_rss"] = _status_kb("VmHWM")
    result["rss_before_export"] = proc.memory_info().rss
    result["peak_reset"] = _reset_peak()
    with Sampler() as sampler:
        t = time.perf_counter()
        if keras_export:
            model.export(str(out), format="onnx")
        else:
            report = export_keras(model, out)
        result["export_seconds"] = time.perf_counter() - t
    result["export_peak_rss"] = _status_kb("VmHWM") if result["peak_reset"] else None
    result["export_peak_rss_sampled"] = sampler.peak
    result["export_peak_anon_sampled"] = sampler.peak_anon
    result["process_ru_maxrss"] = _ru_maxrss()
    if not keras_export:
        result["onnx_bytes"] = out.stat().st_size
        result["data_bytes"] = report.external_data_bytes
        result["export_parity_max_abs_diff"] = report.parity.worst if report.parity else None
        result["export_parity_cases"] = report.parity.cases if report.parity else 0
        result["report"] = str(report)
    return result


def _ru_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def advise_random(data_path: Path) -> int:
    """``madvise(MADV_RANDOM)`` each mapping of ``data_path`` in this process (Linux); returns the count.

    Measured: it changes nothing here, because the file's pages are already in the page cache and the
    kernel's fault-around maps 64 KiB of cached pages per fault whatever the advice.
    """
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    target, count = str(data_path.resolve()), 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, stop = (int(x, 16) for x in fields[0].split("-"))
            count += libc.madvise(start, stop - start, mmap.MADV_RANDOM) == 0
    return count


def child_load(path: Path, rows: int, dim: int, advise: bool) -> dict[str, Any]:
    """Time ``embed_runtime.load``, read RSS before the first request, check rows and RSS after requests;
    with ``advise``, ``madvise(MADV_RANDOM)`` the table mapping first (what the runtime could do)."""
    import psutil

    import embed_runtime

    proc = psutil.Process()
    result: dict[str, Any] = {"rss_after_imports": proc.memory_info().rss, "madv_random": advise}
    t = time.perf_counter()
    runtime = embed_runtime.load(path, providers="cpu")
    result["load_seconds"] = time.perf_counter() - t
    if advise:
        result["advised_mappings"] = advise_random(next(path.parent.glob(path.name + ".*.data")))
    result["rss_before_first_request"] = proc.memory_info().rss
    rng = np.random.default_rng(1)
    ids = np.concatenate([[0, 1, rows - 2, rows - 1], rng.integers(0, rows, 60)]).reshape(4, 16)
    t = time.perf_counter()
    got = next(iter(runtime.run(ids).values()))
    result["first_request_seconds"] = time.perf_counter() - t
    result["rss_after_first_request"] = proc.memory_info().rss
    expected = pattern(ids.ravel(), dim).reshape(*ids.shape, dim)
    result["load_parity_max_abs_diff"] = float(np.max(np.abs(got.astype(np.float64) - expected)))
    result["load_parity_ids"] = int(ids.size)
    many = rng.integers(0, rows, (100, 1000))
    for batch in many:
        runtime.run(batch[None, :])
    result["rows_touched_extra"] = int(many.size)
    result["rss_after_100k_random_rows"] = proc.memory_info().rss
    return result


def _run_child(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:], "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "?"
    return found


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    """Parent: run the children for each size, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="0.3,1.2,3", help="table sizes in GB of float32 (x 128 wide)")
    parser.add_argument("--keras-export", default="", help="sizes to also export with Keras's model.export")
    parser.add_argument("--dir", default=None, help="folder for the temporary files (default: $TMPDIR)")
    parser.add_argument("--json", default=None, help="write all measurements here")
    parser.add_argument(
        "--copy-on-read",
        action="store_true",
        help="put the table variable in TF's copy-on-read mode first (as sparse training updates do)",
    )
    parser.add_argument("--child", choices=["export", "keras-export", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--madv-random", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "load":
            result = child_load(Path(args.out), args.rows, DIM, args.madv_random)
        else:
            result = child_export(
                args.rows, DIM, Path(args.out), args.child == "keras-export", args.copy_on_read
            )
        print(json.dumps(result))
        return 0

    results: dict[str, Any] = {"machine": _machine(), "versions": _versions(), "runs": []}
    keras_sizes = {float(s) for s in args.keras_export.split(",") if s}
    for size in [float(s) for s in args.sizes.split(",")]:
        rows = round(size * 2e6)  # 0.3 -> 600,000 rows (0.31 GB); 3 -> 6,000,000 (3.07 GB)
        folder = Path(tempfile.mkdtemp(prefix="large_tables_", dir=args.dir))
        try:
            out = folder / "model.onnx"
            run: dict[str, Any] = {"size_gb": size, "rows": rows, "copy_on_read": args.copy_on_read}
            mode = ["--copy-on-read"] if args.copy_on_read else []
            run["export"] = _run_child(["--child", "export", "--rows", str(rows), "--out", str(out), *mode])
            if "error" not in run["export"]:
                load = ["--child", "load", "--rows", str(rows), "--out", str(out)]
                run["load"] = _run_child(load)
                run["load_madv_random"] = _run_child([*load, "--madv-random"])
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            if size in keras_sizes:
                run["keras_export"] = _run_child(
                    [
                        "--child",
                        "keras-export",
                        "--rows",
                        str(rows),
                        "--out",
                        str(folder / "keras.onnx"),
                        *mode,
                    ]
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        results["runs"].append(run)
        _print_run(run)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print_run(run: dict[str, Any]) -> None:
    e = run["export"]
    mode = ", variable in copy-on-read mode" if run["copy_on_read"] else ""
    print(f"== {run['size_gb']} GB table ({run['rows']:,} x {DIM} float32{mode})")
    if "error" in e:
        print("  export failed:", e["error"][-500:])
        return
    table = e["table_bytes"]
    print(
        f"  build: {e['build_seconds']:.1f} s, peak RSS {_gb(e['build_peak_rss'])}; "
        f"RSS before export {_gb(e['rss_before_export'])}"
    )
    peak = e["export_peak_rss"] or e["export_peak_rss_sampled"]
    print(
        f"  export: {e['export_seconds']:.1f} s, peak RSS {_gb(peak)} = {peak / table:.2f}x table "
        f"(sampled {_gb(e['export_peak_rss_sampled'])}, of it anonymous {_gb(e['export_peak_anon_sampled'])}); parity {e['export_parity_max_abs_diff']} over "
        f"{e['export_parity_cases']} cases; .onnx {e['onnx_bytes']:,} B, .data {e['data_bytes']:,} B"
    )
    for key in ("load", "load_madv_random"):
        _print_load(key, run.get(key, {}))
    k = run.get("keras_export")
    if k:
        if "error" in k:
            print("  keras model.export failed:", k["error"][-300:])
        else:
            kp = k["export_peak_rss"] or k["export_peak_rss_sampled"]
            print(f"  keras model.export: {k['export_seconds']:.1f} s, peak RSS {_gb(kp)}")


def _print_load(key: str, lo: dict[str, Any]) -> None:
    if "error" in lo:
        print(f"  {key} failed:", lo["error"][-500:])
    elif lo:
        print(
            f"  {key}: {lo['load_seconds']:.3f} s, RSS before first request {_gb(lo['rss_before_first_request'])} "
            f"(imports alone {_gb(lo['rss_after_imports'])}), after first request "
            f"{_gb(lo['rss_after_first_request'])}, after 100k random rows {_gb(lo['rss_after_100k_random_rows'])}; "
            f"parity {lo['load_parity_max_abs_diff']} on {lo['load_parity_ids']} ids"
        )


if __name__ == "__main__":
    sys.exit(main())
