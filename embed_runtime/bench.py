"""``embed-runtime bench MODEL``: our runtime against raw onnxruntime, numpy and a memory copy.

For each ``BATCHxSEQ`` shape (random valid ids), measured side by side in one process:

* ``rt.run``: :meth:`embed_runtime.Runtime.run`, validation included, fast paths on (the default);
* ``rt.run io_binding off``: the same with ``RuntimeOptions(io_binding=False)`` (does the fast path pay?);
* ``rt.run(out=)``: written into preallocated arrays;
* ``ort sess.run``: a plain ``onnxruntime.InferenceSession`` with a dict of numpy inputs, what a user writes;
* ``validation only``: the check ``rt.run`` does on a numpy array (its single-input fast check when the
  runtime has one, else :func:`embed_runtime.inputs.prepare_all`): the share of a call spent on ids;
* ``np.take``: numpy on the model's table, when its first output is a bare ``Gather`` of an initializer
  (the table is read from the file by a minimal protobuf reader: ``onnx`` is not a dependency);
* ``memory copy (floor)``: ``np.copyto`` of as many bytes as the outputs into a preallocated array.

Timings are medians per call with min-max spread over samples of several calls; contenders are run in
interleaved rounds so that drift of the machine hits them alike, with the garbage collector off. This
module imports only numpy, onnxruntime and embed_runtime (psutil is not needed); the comparison with
TensorFlow and Keras lives in ``benchmarks/compare.py``, which reuses :func:`measure` from here.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .inputs import prepare_all
from .runtime import Runtime, load
from .session import RuntimeOptions

RT_RUN = "rt.run"
RT_NO_BINDING = "rt.run io_binding off"
RT_OUT = "rt.run(out=)"
ORT_RUN = "ort sess.run"
VALIDATION = "validation only"
NP_TAKE = "np.take"
FLOOR = "memory copy (floor)"


@dataclass(frozen=True)
class Stats:
    """Per-call timing of one contender: median, min and max over samples, in seconds."""

    name: str
    median: float
    min: float
    max: float
    samples: int
    calls_per_sample: int

    @property
    def calls(self) -> int:
        """Timed calls in all."""
        return self.samples * self.calls_per_sample


def _clock(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(
    contenders: Mapping[str, Callable[[], object]],
    *,
    budget: float = 1.0,
    rounds: int = 5,
    min_samples: int = 5,
    max_samples: int = 2000,
    sample_time: float = 2e-4,
    warmup: float = 0.05,
) -> dict[str, Stats]:
    """Time each zero-argument callable in interleaved rounds; returns per-call :class:`Stats` per name.

    Each contender is warmed up (at least 2 calls and ``warmup`` seconds), its cost estimated, then timed
    in samples of ``k`` back-to-back calls (``k`` such that a sample lasts about ``sample_time``, so that
    microsecond calls are not drowned by the clock). The number of samples is ``budget`` seconds' worth,
    clamped to ``[min_samples, max_samples]``: slow contenders such as Keras ``predict`` get fewer. The
    samples are split over ``rounds`` rounds, each running every contender in turn.
    """
    plan: dict[str, tuple[int, int]] = {}
    for name, fn in contenders.items():
        fn()
        start, calls = time.perf_counter(), 1
        while calls < 2 or time.perf_counter() - start < warmup:
            fn()
            calls += 1
        cost = max(_clock(fn, 1), 1e-9)
        per_sample = max(1, math.ceil(sample_time / cost))
        samples = int(min(max_samples, max(min_samples, budget / (cost * per_sample))))
        plan[name] = (per_sample, samples)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                per_sample, samples = plan[name]
                todo = samples // rounds + (1 if r < samples % rounds else 0)
                fn = contenders[name]
                times[name].extend(_clock(fn, per_sample) for _ in range(todo))
    finally:
        if enabled:
            gc.enable()
    return {
        name: Stats(name, float(np.median(t)), min(t), max(t), len(t), plan[name][0])
        for name, t in times.items()
    }


def parse_shape(text: str) -> tuple[int, int]:
    """``"32x10"`` -> ``(32, 10)``; raises ``argparse.ArgumentTypeError`` for anything else."""
    try:
        batch, seq = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxSEQ, e.g. 32x10") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: batch and sequence length must be >= 1")
    return batch, seq


def format_time(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant digits: ``7.12 us``, ``31.9 ms``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def table_rows(
    stats: Mapping[str, Stats], reference: str, floor: str | None = None
) -> list[tuple[str, str, str, str, str]]:
    """Rows ``(contender, median, min-max, x reference, x floor)`` sorted by median, ratios of medians."""
    ref = stats[reference].median if reference in stats else math.nan
    low = stats[floor].median if floor is not None and floor in stats else math.nan
    rows = []
    for s in sorted(stats.values(), key=lambda s: s.median):
        rows.append(
            (
                s.name,
                format_time(s.median),
                f"{format_time(s.min)} - {format_time(s.max)}",
                f"{s.median / ref:.3g}",
                f"{s.median / low:.3g}" if not math.isnan(low) else "",
            )
        )
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def random_ids(rt: Runtime, batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid random ids (never the padding id 0) in the dtype of each graph input."""
    feeds = {}
    for spec in rt.inputs:
        high = spec.input_dim or 2
        feeds[spec.name] = rng.integers(1 if high > 1 else 0, high, size=(batch, seq)).astype(spec.dtype)
    return feeds


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, Any]]:
    """``(field number, value)`` of one protobuf message: an int for varints, a memoryview otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


_TABLE_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # ONNX TensorProto.DataType


def _tensor(buf: memoryview) -> tuple[str, np.ndarray | None]:
    """Name and value of a ``TensorProto`` stored in the file (``None`` for external or unknown data)."""
    name, dims, dtype, raw, floats = "", [], None, None, None
    for number, value in _fields(buf):
        if number == 1:
            dims.extend([value] if isinstance(value, int) else _packed_varints(value))
        elif number == 2:
            dtype = _TABLE_DTYPES.get(value)
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = value
        elif number == 4:
            floats = value  # packed float_data: the same little-endian bytes as raw_data
    if raw is None and dtype is np.float32:
        raw = floats
    if dtype is None or raw is None:
        return name, None
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    return name, array.reshape(dims) if array.size == int(np.prod(dims)) else None


def _packed_varints(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def lookup_table(path: str | os.PathLike[str], output: str) -> np.ndarray | None:
    """The table behind ``output`` when a ``Gather`` (axis 0) of an initializer by a graph input produces
    it directly, read from the ONNX file with a minimal protobuf reader (no ``onnx`` import); else
    ``None`` (not a bare lookup, or the table is stored as external data)."""
    with open(path, "rb") as f:
        model = memoryview(f.read())
    graph = next((v for n, v in _fields(model) if n == 7), None)
    if graph is None:
        return None
    nodes, initializers, inputs = [], {}, set()
    for number, value in _fields(graph):
        if number == 1:
            node = {"input": [], "output": [], "op": "", "axis": 0}
            for n, v in _fields(value):
                if n in (1, 2):
                    node["input" if n == 1 else "output"].append(bytes(v).decode())
                elif n == 4:
                    node["op"] = bytes(v).decode()
                elif n == 5:
                    attr = dict(_fields(v))
                    if bytes(attr.get(1, b"")).decode() == "axis":
                        node["axis"] = attr.get(3, 0)
            nodes.append(node)
        elif number == 5:
            name, array = _tensor(value)
            initializers[name] = array
        elif number == 11:
            inputs.add(bytes(dict(_fields(value)).get(1, b"")).decode())
    for node in nodes:
        if node["op"] == "Gather" and node["output"] == [output] and node["axis"] == 0:
            data, ids = node["input"]
            table = initializers.get(data)
            if table is not None and ids in inputs and table.ndim == 2:
                return table.copy()
    return None


def validator(rt: Runtime, ids: Any) -> Callable[[], object]:
    """A call doing the validation ``rt.run(ids)`` does: the runtime's fast check of one ndarray when it
    has one (a private attribute, looked up defensively), else :func:`prepare_all`."""
    fast = getattr(rt, "_fast_check", None)
    if callable(fast) and isinstance(ids, np.ndarray):
        return lambda: fast(ids)
    return lambda: prepare_all(ids, rt.inputs)


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
    ids: Any = next(iter(feeds.values())) if len(feeds) == 1 else feeds
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
        VALIDATION: validator(rt, ids),
        FLOOR: lambda: np.copyto(dst, src),
    }
    if table is not None:
        first = rt.outputs[0].name
        only = next(iter(feeds.values()))
        if np.array_equal(np.take(table, only, axis=0), result[first]):
            contenders[NP_TAKE] = lambda: np.take(table, only, axis=0)
        else:
            notes.append("np.take skipped: it does not reproduce the model's output (not a bare lookup)")
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
    parser.add_argument("--providers", default="auto", help="execution providers (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of our runtime")
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
    table = lookup_table(args.model, rt.outputs[0].name)
    rng = np.random.default_rng(args.seed)
    print(f"# embed-runtime bench {args.model}")
    print(
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, providers {', '.join(rt.providers)}, "
        f"threads {args.threads or 'default'}; median per call, ratios of medians\n"
    )
    if table is None:
        print("np.take skipped: the first output is not a bare Gather of a table stored in the file\n")
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
        out_bytes = sum(
            a.nbytes for a in rt.run(feeds if len(feeds) > 1 else next(iter(feeds.values()))).values()
        )
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
    parser = argparse.ArgumentParser(prog="embed-runtime bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(_standalone())
