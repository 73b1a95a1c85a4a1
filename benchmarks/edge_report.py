"""The report of ``benchmarks/edge_compare.py``: its rows, the "Against LiteRT" table, plot and prose, and
the section of ``docs/edge.md`` between its markers, rewritten and nothing else."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _docs import write_between

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "edge.md"
PLOT = ROOT / "docs" / "edge-litert.png"
BEGIN, END = "<!-- against-litert: benchmarks/edge_compare.py -->", "<!-- /against-litert -->"
LITERT, OURS = "LiteRT", "embed_runtime"


@dataclass(frozen=True)
class Row:
    """One engine on one artifact: bytes on disk, seconds (cold start, import, per-call medians of the
    two shapes), the max abs output error against Keras and, for ours, onnxruntime's own 1x16 floor and
    the path that ran (``numpy lookup`` or ``onnxruntime``)."""

    model: str
    dtype: str
    engine: str
    bytes: int
    cold: float
    imports: float
    small: float
    batch: float
    error: float
    floor: float = float("nan")
    path: str = ""


@dataclass(frozen=True)
class Variants:
    """onnxruntime's 1x16 floor on one artifact (seconds per call) under each of :data:`SESSION_VARIANTS`,
    and the artifact's op types with their counts."""

    model: str
    floors: dict[str, float]
    ops: dict[str, int]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} us"


def _pair(rows: dict[str, Row], cell: Callable[[Row], str]) -> str:
    return f"{cell(rows[LITERT])} / {cell(rows[OURS])}"


PAIRED_CELLS: tuple[Callable[[Row], str], ...] = (
    lambda r: f"{r.bytes:,}", lambda r: _ms(r.cold), lambda r: _us(r.small), lambda r: _us(r.batch),
    lambda r: f"{r.error:.2e}",
)  # fmt: skip


def paired(rows: Sequence[Row]) -> list[tuple[str, str, dict[str, Row]]]:
    """``(model, dtype, {engine: row})`` in the order the rows came, both engines present."""
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.dtype), {})[row.engine] = row
    return [(m, d, g) for (m, d), g in groups.items() if set(g) == {LITERT, OURS}]


def markdown(rows: Sequence[Row]) -> str:
    """The comparison table: one line per model and table dtype, each cell ``LiteRT / embed_runtime``."""
    header = ["model", "table dtype", "bytes on disk", "cold start", "1x16", "32x10", "1x16 ours / LiteRT",
              "1x16 onnxruntime floor", "ours ran on", "max abs error vs Keras"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
    for model, dtype, g in paired(rows):
        cells = [model, dtype, *(_pair(g, cell) for cell in PAIRED_CELLS[:4])]
        cells += [f"{g[OURS].small / g[LITERT].small:.2f}", _us(g[OURS].floor), g[OURS].path or "?"]
        cells.append(_pair(g, PAIRED_CELLS[4]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PANELS = (("bytes on disk", "bytes", 1.0, True), ("cold start (ms)", "cold", 1e3, True),
          ("1x16 latency (us)", "small", 1e6, False), ("32x10 latency (us)", "batch", 1e6, False))  # fmt: skip


def plot(rows: Sequence[Row], path: Path) -> None:
    """Size and cold start (log scale), 1x16 and 32x10 latency (linear, from 0), LiteRT and embed_runtime
    bars side by side; black ticks on the 1x16 panel mark onnxruntime's floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, ScalarFormatter

    groups = paired(rows)
    x = np.arange(len(groups))
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 11), sharex=True)
    for ax, (title, field, scale, log) in zip(axes, PANELS):
        for offset, engine, colour in ((-0.2, LITERT, "tab:orange"), (0.2, OURS, "tab:blue")):
            values = [getattr(g[engine], field) * scale for _, _, g in groups]
            ax.bar(x + offset, values, 0.4, label=engine, color=colour)
        if log:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(EngFormatter("B") if field == "bytes" else ScalarFormatter())
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    floors = [g[OURS].floor * 1e6 for _, _, g in groups]
    axes[2].scatter(x + 0.2, floors, marker="_", s=400, color="black", label="onnxruntime floor", zorder=3)
    for ax in axes[:3]:
        ax.legend(fontsize=8)
    axes[-1].set_xticks(x, [f"{m}\n{d}" for m, d, _ in groups], fontsize=8)
    fig.suptitle("embed_runtime vs LiteRT, 1 thread (lower is better; seed: 1x10 for 1x16)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def section(rows: Sequence[Row], notes: str) -> str:
    """The "Against LiteRT" section (markers not included)."""
    return (
        "## Against LiteRT\n\n"
        "Written by `benchmarks/edge_compare.py`: the same Keras 3 model as our artifact "
        "(`export_keras(table_dtype=...)`, run by `embed_runtime.load(path, threads=1)`) and as TensorFlow's "
        "TFLite conversion (float32; float16 weights; dynamic-range int8), run by the LiteRT interpreter "
        "(`ai_edge_litert`, `num_threads=1`). Each cell is `LiteRT / embed_runtime`. Cold start: load "
        "and first inference in a fresh process (imports not included), median; latencies: per-call "
        "medians of one `set_tensor, invoke, get_tensor` or one `rt.run(ids)`, all six contenders of a model "
        "interleaved in one process.\n\n"
        f"{markdown(rows)}\n\n{notes}\n\n![embed_runtime vs LiteRT](edge-litert.png)\n"
    )


def target_text(rows: Sequence[Row]) -> str:
    """Which artifacts meet the 1x16 target (ours no slower than LiteRT) and why the others miss it."""
    groups = [(m, d, g) for m, d, g in paired(rows)]
    met = [f"{m} {d}" for m, d, g in groups if g[OURS].small <= g[LITERT].small]
    missed = [(m, d, g) for m, d, g in groups if g[OURS].small > g[LITERT].small]
    text = f"**The 1x16 target** (ours no slower than LiteRT): met by {', '.join(met) or 'none'}"
    if not missed:
        return text + "."
    text += "; missed by " + ", ".join(
        f"{m} {d} ({g[OURS].small / g[LITERT].small:.2f}x on {g[OURS].path or '?'}, whose floor alone is "
        f"{g[OURS].floor / g[LITERT].small:.2f}x LiteRT's call)"
        for m, d, g in missed
    )
    return text + "."


def gap_text(rows: Sequence[Row], variants: Variants | None) -> str:
    """Where the 1x16 time goes: which artifacts the lookup path answers, onnxruntime's floor against
    LiteRT's whole call elsewhere, our layer on top of it, and the session options tried."""
    groups = [(f"{m} {d}", g) for m, d, g in paired(rows)]
    lookups = [name for name, g in groups if g[OURS].path == "numpy lookup"]
    on_ort = [g for _, g in groups if g[OURS].path != "numpy lookup"]
    text = (
        f"The runtime answers {', '.join(lookups) or 'no artifact'} on its numpy lookup path "
        "(`embed_runtime.lookup`: the exporter proves the output is only the lookup, the runtime reads the "
        "dequantized table out of the model at load and checks probes byte for byte against onnxruntime; a "
        "call is the one id check and `table.take(ids, 0)`), so those calls pay neither onnxruntime's "
        "per-call nor its per-node cost. Tables above `RuntimeOptions.lookup_max_bytes` (64 MiB; the "
        "1M x 64 one is 256 MB) stay on onnxruntime rather than hold a second copy."
    )
    if on_ort:
        floor = [g[OURS].floor / g[LITERT].small for g in on_ort]
        layer = [g[OURS].small - g[OURS].floor for g in on_ort]
        text += (
            f" Where onnxruntime runs, its floor alone (`run_with_iobinding` on ids bound once: no "
            f"validation, no copies) takes {min(floor):.2f}-{max(floor):.2f}x LiteRT's whole call, and the "
            f"runtime's layer on top (the id check, the copy into the bound buffer, the result dict) adds "
            f"{min(layer) * 1e6:.2g}-{_us(max(layer))}."
        )
    if variants is not None:
        ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(variants.ops.items()))
        tried = "; ".join(f"{name} {_us(t)}" for name, t in variants.floors.items())
        text += (
            f" The {variants.model} is {sum(variants.ops.values())} onnxruntime nodes ({ops}): it is "
            "onnxruntime's per-node dispatch that LiteRT does not pay. Session options tried on its float32 "
            f"1x16 floor (interleaved): {tried}."
        )
    return text


def notes_text(rows: Sequence[Row], seconds: float, variants: Variants | None = None) -> str:
    """Shapes, conversions, machine and import times."""
    imports = {e: statistics.median(r.imports for r in rows if r.engine == e) for e in (LITERT, OURS)}
    return (
        f"{target_text(rows)}\n\n{gap_text(rows, variants)}\n\n"
        "Shapes: batch x length; the seed's length is fixed at 10, so its 1x16 column is 1x10. The TFLite "
        "files are converted from a concrete function on int64 ids `(None, None)` (the seed: `(None, 10)`); "
        "each interpreter is resized once to the timed shape, so LiteRT runs a static graph. Ids: random, "
        "every other row a quarter padding. Errors: max over both shapes against the float Keras model; "
        "the 1M x 64 rows are N(0, 1). Import times (median): "
        f"`ai_edge_litert.interpreter` {_ms(imports[LITERT])}, `embed_runtime` {_ms(imports[OURS])}. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; whole run {seconds:.0f} s."
    )


def write_doc(
    rows: Sequence[Row], seconds: float, doc: Path = DOC, image: Path = PLOT, variants: Variants | None = None
) -> None:
    """Write the plot and replace the section in ``doc``, re-read right before writing."""
    plot(rows, image)
    text = section(rows, notes_text(rows, seconds, variants))
    write_between(doc, BEGIN, END, text)
