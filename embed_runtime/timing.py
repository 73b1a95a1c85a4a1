"""The timing library behind ``embed-runtime bench`` and ``benchmarks/compare.py``.

:func:`measure` times zero-argument callables in interleaved rounds (warm-up, samples of back-to-back
calls, garbage collector off) and returns per-call :class:`Stats`; :func:`table_rows`,
:func:`markdown_table` and :func:`format_time` turn them into the reports. The contender names below are
shared so that both reports label the same things alike. numpy only: no onnxruntime, no psutil.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
