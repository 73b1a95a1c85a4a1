"""``embed-runtime bench MODEL``: our runtime against raw onnxruntime, numpy and a memory copy.

For each ``BATCHxSEQ`` shape (random valid ids), measured side by side in one process:

* ``rt.run``: :meth:`embed_runtime.Runtime.run`, validation included, fast paths on (the default);
* ``rt.run io_binding off``: the same with ``RuntimeOptions(io_binding=False)`` (does the fast path pay?);
* ``rt.run(out=)``: written into preallocated arrays;
* ``ort sess.run``: a plain ``onnxruntime.InferenceSession`` with a dict of numpy inputs, what a user writes;
* ``validation only``: :meth:`embed_runtime.Runtime.prepare`, the check ``rt.run`` does, on its own;
* ``np.take``: numpy on the model's table, when the first output is a per-id lookup of the first input
  (the table is read by running the model on every id, see :func:`lookup_table`, up to
  :data:`TABLE_BYTES_CAP`; ``onnx`` is not a dependency);
* ``memory copy (floor)``: ``np.copyto`` of as many bytes as the outputs into a preallocated array.

This module is the subcommand only: the timing (:func:`~embed_runtime.timing.measure`, interleaved rounds
with the garbage collector off, medians with min-max spread) and the report tables are
:mod:`embed_runtime.timing`, which ``benchmarks/compare.py`` (the comparison with TensorFlow and Keras)
uses too. ``--providers``/``--threads`` and the one-line error path are :mod:`embed_runtime.cli_common`'s.
Imports only numpy, onnxruntime and embed_runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import onnxruntime as ort

from . import Runtime, RuntimeOptions, load
from .cli_common import add_session_arguments, make_parser, run_command
from .lookup import arranged_ids
from .timing import (
    FLOOR,
    NP_TAKE,
    ORT_RUN,
    RT_NO_BINDING,
    RT_OUT,
    RT_RUN,
    VALIDATION,
    Stats,
    markdown_table,
    measure,
    table_rows,
)

Ids = np.ndarray | dict[str, np.ndarray]


def parse_shape(text: str) -> tuple[int, int]:
    """``"32x10"`` -> ``(32, 10)``; raises ``argparse.ArgumentTypeError`` for anything else."""
    try:
        batch, seq = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxSEQ, e.g. 32x10") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: batch and sequence length must be >= 1")
    return batch, seq


def random_ids(rt: Runtime, batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid random ids (never the padding id 0) in the dtype of each graph input."""
    feeds = {}
    for spec in rt.inputs:
        high = spec.input_dim or 2
        feeds[spec.name] = rng.integers(1 if high > 1 else 0, high, size=(batch, seq)).astype(spec.dtype)
    return feeds


TABLE_BYTES_CAP = 256 * 2**20
"""The largest table :func:`lookup_table` reads, 256 MiB: it is a second copy of the table in memory, so
for a bigger one ``np.take`` is skipped (with a note) rather than doubling the footprint of the run."""


class NoTable(Exception):
    """:func:`lookup_table` cannot give a table; the message says why (it becomes the skip note)."""


def lookup_table(rt: Runtime, max_bytes: int = TABLE_BYTES_CAP) -> np.ndarray:
    """Rows ``0 .. input_dim - 1`` of the first output as a function of the first input's ids.

    Read by running the model itself on those ids (in rows of the input's fixed length, the last row
    padded with id 0 and cut back, or in rows of one id when the length is free, so that a recurrent
    layer never sees a long sequence; every other input gets zeros of the same shape): only public
    onnxruntime and numpy calls, nothing parses the file. When the first output is a
    per-id lookup this is its table; :func:`bench_shape` proves that ``np.take`` on it reproduces the
    model's output on the benchmark's ids before timing it. Raises :class:`NoTable` when the model records
    no id range, when its first output is not one row per id, or when the table would exceed ``max_bytes``.
    """
    first, output = rt.inputs[0], rt.outputs[0].name
    rows = first.input_dim
    if rows is None:
        raise NoTable(f"the model records no id range (input_dim) for its input {first.name!r}")
    length = first.input_length or 1

    def run(ids: np.ndarray) -> np.ndarray:
        feeds = {spec.name: np.zeros(ids.shape, dtype=spec.dtype) for spec in rt.inputs}
        feeds[first.name] = ids
        return rt.run(feeds, outputs=[output])[output]

    probe_ids = np.zeros((1, length), dtype=first.dtype)
    probe = run(probe_ids)
    if probe.ndim != 3 or probe.shape[:2] != probe_ids.shape:
        raise NoTable(
            f"the first output {output!r} has shape {probe.shape} for ids of shape {probe_ids.shape}, "
            "not one row per id"
        )
    size = rows * probe[0, 0].nbytes
    if size > max_bytes:
        raise NoTable(
            f"the table behind {output!r} ({rows} rows, {size / 2**20:.0f} MiB) is over the "
            f"{max_bytes / 2**20:.0f} MiB this benchmark copies"
        )
    return run(arranged_ids(rows, length, first.dtype)).reshape(-1, probe.shape[2])[:rows]


def as_ids(feeds: dict[str, np.ndarray]) -> Ids:
    """What ``rt.run`` takes: the array alone for a single-input model, else the dict."""
    return next(iter(feeds.values())) if len(feeds) == 1 else feeds


def bench_shape(
    rt: Runtime,
    plain: Runtime,
    sess: ort.InferenceSession,
    table: np.ndarray | None,
    feeds: dict[str, np.ndarray],
    **measure_args: Any,
) -> tuple[dict[str, Stats], list[str]]:
    """Measure every contender for one set of ids; returns the stats and notes (skipped contenders)."""
    notes: list[str] = []
    ids = as_ids(feeds)
    result = rt.run(ids)
    out = {name: np.empty_like(a) for name, a in result.items()}
    nbytes = sum(a.nbytes for a in result.values())
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    contenders: dict[str, Callable[[], object]] = {
        RT_RUN: lambda: rt.run(ids),
        RT_NO_BINDING: lambda: plain.run(ids),
        RT_OUT: lambda: rt.run(ids, out=out),
        ORT_RUN: lambda: sess.run(None, feeds),
        VALIDATION: lambda: rt.prepare(ids),
        FLOOR: lambda: np.copyto(dst, src),
    }
    if table is not None:
        first = rt.outputs[0].name
        only = next(iter(feeds.values()))
        if np.array_equal(np.take(table, only, axis=0), result[first]):
            contenders[NP_TAKE] = lambda: np.take(table, only, axis=0)
        else:
            notes.append("np.take skipped: it does not reproduce the model's output (not a per-id lookup)")
    return measure(contenders, **measure_args), notes


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MB, where the OS reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``embed-runtime bench``."""
    parser.add_argument("model", help="the .onnx model to benchmark")
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=None,
        metavar="BATCHxSEQ",
        help="id shapes to time (default: 1x16 32x10 4096x128, or those batches at the model's fixed length; "
        "with --quick: 512x128 instead of 4096x128)",
    )
    add_session_arguments(parser, threads_help="intra-op threads of our runtime (default: onnxruntime's)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds of timing per contender and shape (default 1)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--min-samples", type=int, default=5, help="fewest samples per contender")
    parser.add_argument("--quick", action="store_true", help="a short run: smaller shapes, 0.1 s budgets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ids")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark, print one Markdown table per shape; returns the exit status."""
    shapes = args.shapes or (
        [(1, 16), (32, 10), (512, 128)] if args.quick else [(1, 16), (32, 10), (4096, 128)]
    )
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 1.0)
    rt = load(args.model, providers=args.providers, threads=args.threads)
    plain = load(
        args.model, providers=rt.providers, options=RuntimeOptions(io_binding=False), threads=args.threads
    )
    so = ort.SessionOptions()  # onnxruntime's defaults (threads, spinning), as a user would have them
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(args.model), sess_options=so, providers=rt.providers)
    rng = np.random.default_rng(args.seed)
    print(f"# embed-runtime bench {args.model}")
    print(
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, providers {', '.join(rt.providers)}, "
        f"threads {args.threads or 'default'}; median per call, ratios of medians\n"
    )
    table: np.ndarray | None = None
    try:
        table = lookup_table(plain)
    except NoTable as exc:
        print(f"np.take skipped: {exc}\n")
    report: dict[str, Any] = {"model": str(args.model), "providers": rt.providers, "shapes": {}}
    fixed = rt.inputs[0].input_length
    if fixed is not None and args.shapes is None:  # default shapes: keep the batches, use the fixed length
        shapes = list(dict.fromkeys((batch, fixed) for batch, _ in shapes))
    for batch, seq in shapes:
        if fixed is not None and fixed != seq:
            print(f"## {batch}x{seq}: skipped, the model's input length is fixed at {fixed}\n")
            continue
        feeds = random_ids(rt, batch, seq, rng)
        stats, notes = bench_shape(
            rt, plain, sess, table, feeds, budget=budget, rounds=args.rounds, min_samples=args.min_samples
        )
        out_bytes = sum(a.nbytes for a in rt.run(as_ids(feeds)).values())
        print(f"## {batch}x{seq} ({out_bytes / 1e6:.3g} MB of outputs)\n")
        header = ["contender", "median", "min - max", f"x {RT_RUN}", "x floor"]
        print(markdown_table(header, table_rows(stats, RT_RUN, FLOOR)))
        for note in notes:
            print(f"\n{note}")
        validation = stats[VALIDATION].median / stats[RT_RUN].median
        print(
            f"\nvalidation is {validation:.1%} of rt.run; rt.run / ort sess.run = "
            f"{stats[RT_RUN].median / stats[ORT_RUN].median:.3g}\n"
        )
        report["shapes"][f"{batch}x{seq}"] = {name: asdict(s) for name, s in stats.items()}
    peak = peak_rss_mb()
    if peak is not None:
        print(f"peak RSS of this process: {peak:.0f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def _standalone() -> int:
    """``python -m embed_runtime.bench MODEL``, the same as ``embed-runtime bench MODEL``."""
    parser = make_parser("embed-runtime bench", __doc__.splitlines()[0])
    add_arguments(parser)
    return run_command("embed-runtime bench", main, parser.parse_args())


if __name__ == "__main__":
    sys.exit(_standalone())
