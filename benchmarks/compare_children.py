"""Fresh child processes of ``benchmarks/compare.py``: cold starts and the streaming run.

Run as a script, this file is the child; it prints one JSON line with its result. Only the standard
library is imported at the top, so a child pays for exactly what it measures:

    python compare_children.py rt-cold MODEL.onnx BATCH SEQ      # import embed_runtime, load, first run
    python compare_children.py tf-cold MODEL.keras BATCH SEQ     # import tensorflow, load_model, predict
    python compare_children.py stream MODEL.onnx SEQUENCES SEQ BATCH   # BATCH 0: run_batched's default

The parent side, :func:`run_child`, times a child from spawn to its result line (interpreter start
included); the child reports its own peak RSS (``VmHWM``) up to its result.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from typing import Any

T0 = time.perf_counter()
HERE = os.path.abspath(__file__)


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """Peak RSS of this process in MB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork``/``vfork`` and ``execve``
    into it, so a child of a 10 GB TensorFlow parent would report 10 GB."""
    with open("/proc/self/status", encoding="ascii") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rt_cold(model: str, batch: int, seq: int) -> dict[str, Any]:
    """``import embed_runtime`` + load + first run, as a fresh process does it."""
    import numpy as np

    import embed_runtime

    rt = embed_runtime.load(model)
    result = rt.run(np.ones((batch, seq), dtype=np.int64))
    return {"seconds_in_process": time.perf_counter() - T0, "outputs": sorted(result)}


def tf_cold(model: str, batch: int, seq: int) -> dict[str, Any]:
    """``import tensorflow`` + ``keras.models.load_model`` + first ``predict``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf  # noqa: F401  (the import is what is measured)

    m = keras.models.load_model(model)
    result = m.predict(np.ones((batch, seq), dtype=np.int64), verbose=0)
    return {"seconds_in_process": time.perf_counter() - T0, "outputs": [str(np.shape(result))]}


def stream(model: str, sequences: int, seq: int, batch: int) -> dict[str, Any]:
    """Single-call throughput of ``rt.run`` / ``rt.run(out=)`` per batch size, then ``run_batched`` over
    all ids (default ``batch`` 0: the runtime's default chunk size), with and without its progress bar."""
    import numpy as np

    import embed_runtime

    rt = embed_runtime.load(model)
    dim = rt.inputs[0].input_dim or 2
    ids = np.random.default_rng(0).integers(1, dim, size=(sequences, seq), dtype=np.int64)
    rss_loaded = _rss_mb()

    def throughput(size: int, with_out: bool) -> float:
        """Sequences/s of back-to-back calls on consecutive slices of the ids (fresh ids every call, as
        in streaming: the same slice again would keep its table rows in cache), median of 3 passes over
        about 100,000 sequences (at least 20 calls)."""
        count = max(20, 100_000 // size)
        slices = [ids[(i * size) % (sequences - size + 1) :][:size] for i in range(count)]
        out = {name: np.empty_like(a) for name, a in rt.run(slices[0]).items()}
        passes = []
        for _ in range(3):
            start = time.perf_counter()
            if with_out:
                for chunk in slices:
                    rt.run(chunk, out=out)
            else:
                for chunk in slices:
                    rt.run(chunk)
            passes.append(count * size / (time.perf_counter() - start))
        return float(np.median(passes))

    if batch <= 0:  # the runtime's default chunk size
        batch = inspect.signature(rt.run_batched).parameters["batch_size"].default
    single: dict[str, float] = {}
    for size in sorted({64, 256, 1024, 4096, batch}):
        single[f"rt.run {size}x{seq}"] = throughput(size, False)
        single[f"rt.run(out=) {size}x{seq}"] = throughput(size, True)
    runs: dict[str, Any] = {}
    for progress in (False, True):
        samples = [_rss_mb()]
        start, done = time.perf_counter(), 0
        every = max(1, sequences // batch // 50)
        for i, result in enumerate(rt.run_batched(ids, batch_size=batch, progress=progress)):
            done += len(next(iter(result.values())))
            if i % every == 0:
                samples.append(_rss_mb())
        seconds = time.perf_counter() - start
        samples.append(_rss_mb())
        runs["progress bar" if progress else "no progress bar"] = {
            "sequences": done,
            "seconds": seconds,
            "throughput": done / seconds,
            "rss_mb_first": samples[0],
            "rss_mb_max": max(samples),
            "rss_mb_last": samples[-1],
        }
    return {
        "ids_mb": ids.nbytes / 2**20,
        "rss_mb_loaded": rss_loaded,
        "single_call_throughput": single,
        "run_batched": runs,
        "batch_size": batch,
        "chunk_output_mb": sum(a.nbytes for a in rt.run(ids[:batch]).values()) / 2**20,
    }


def run_child(args: list[str], timeout: float = 300.0) -> dict[str, Any]:
    """Run this file as a child with ``args``; returns its JSON result plus ``wall_s`` (spawn to result
    line) and the child's ``peak_rss_mb``. Raises ``RuntimeError`` when the child fails."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, HERE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    wall = time.perf_counter() - start
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or not line.strip():
        raise RuntimeError(f"child {args} failed ({proc.returncode}): {err.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(line)
    result["wall_s"] = wall
    return result


def _main(argv: list[str]) -> int:
    mode, path, *numbers = argv
    n = [int(x) for x in numbers]
    if mode == "rt-cold":
        result = rt_cold(path, *n)
    elif mode == "tf-cold":
        result = tf_cold(path, *n)
    elif mode == "stream":
        result = stream(path, *n)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["peak_rss_mb"] = _peak_mb()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
