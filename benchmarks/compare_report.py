"""The report of ``benchmarks/compare.py``: issue-5 targets, Markdown tables and the latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._docs import heading_span
from benchmarks.text_speed import HEADING as TEXT_HEADING
from embed_runtime.timing import (
    FLOOR,
    RT_NO_BINDING,
    RT_OUT,
    RT_RUN,
    VALIDATION,
    format_time,
    markdown_table,
)

PREDICT, CALL, TF_FUNCTION, OURS_ORT = (
    "Keras predict",
    "Keras model(ids)",
    "tf.function",
    "ort sess.run (our graph)",
)
MB = 2**20


def _median(record: dict[str, Any], name: str) -> float:
    return float(record["stats"][name]["median"])


def _case(results: dict[str, Any], shape_prefix: str, table: str = "50k x 128") -> dict[str, Any]:
    return next(r for r in results["latency"] if r["table"] == table and r["shape"].startswith(shape_prefix))


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(target, measured, met)`` for every target of issue 5."""
    rows = []
    small = _case(results, "1x16")
    rt = _median(small, RT_RUN)
    ratio = rt / _median(small, OURS_ORT)
    rows.append(("1x16: `rt.run` / raw `sess.run` <= 1.0", f"{ratio:.2f}", ratio <= 1.0))
    ratio = _median(small, TF_FUNCTION) / rt
    rows.append(("1x16: `tf.function` / `rt.run` >= 40", f"{ratio:,.0f}x", ratio >= 40))
    ratio = _median(small, PREDICT) / rt
    rows.append(("1x16: Keras `predict` / `rt.run` >= 5,000", f"{ratio:,.0f}x", ratio >= 5000))
    big = max((r for r in results["latency"] if r["table"] == "50k x 128"), key=lambda r: r["output_bytes"])
    out = _median(big, RT_OUT)
    ratio = out / _median(big, FLOOR)
    rows.append((f"{big['shape']}: `rt.run(out=)` / memory copy <= 1.3", f"{ratio:.2f}", ratio <= 1.3))
    ratio = _median(big, CALL) / out
    rows.append(
        (
            f"{big['shape']}: `rt.run(out=)` faster than Keras `model(ids)`",
            f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower",
            ratio > 1,
        )
    )
    for cold in results["cold_start"]:
        ratio = cold["rt"]["wall_s"] / cold["tf"]["wall_s"]
        rows.append(
            (
                f"cold start {cold['table']}: ours / TensorFlow <= 0.10",
                f"{ratio:.3f} ({cold['rt']['wall_s']:.2f} s vs {cold['tf']['wall_s']:.2f} s)",
                ratio <= 0.1,
            )
        )
        limit = (cold["table_bytes"] + cold["output_bytes"]) / MB + 120
        peak = cold["rt"]["peak_rss_mb"]
        rows.append(
            (
                f"cold start {cold['table']}: peak RSS <= table + output + 120 MB ({limit:.0f} MB)",
                f"{peak:.0f} MB",
                peak <= limit,
            )
        )
    st = results["streaming"]
    run = st["run_batched"]["no progress bar"]
    best_name = max(
        (k for k in st["single_call_throughput"] if k.startswith("rt.run ")),
        key=lambda k: st["single_call_throughput"][k],
    )
    best = st["single_call_throughput"][best_name]
    ratio = run["throughput"] / best
    rows.append(
        (
            f"streaming {run['sequences']:,} x 32 ids: `run_batched` >= 90% of best `rt.run` ({best_name})",
            f"{ratio:.0%} ({run['throughput']:,.0f} vs {best:,.0f} seq/s)",
            ratio >= 0.9,
        )
    )
    growth = run["rss_mb_max"] - run["rss_mb_first"]
    rows.append(
        (
            "streaming: memory flat (peak RSS stated)",
            f"peak {st['peak_rss_mb']:.0f} MB; +{growth:.0f} MB while streaming "
            f"(ids {st['ids_mb']:.0f} MB, one chunk's output {st['chunk_output_mb']:.0f} MB)",
            growth <= 2 * st["chunk_output_mb"] + 50,
        )
    )
    return rows


def _ratio_row(what: str, measured: str, ratio: float, verdicts: tuple[str, str]) -> tuple[str, str, str]:
    """``(what, "<measured> = <ratio>", verdict)``: the first verdict above 1.05, else the second."""
    return what, f"{measured} = {ratio:.2f}", verdicts[0] if ratio > 1.05 else verdicts[1]


def fast_paths(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(fast path, measured, verdict)``: does each fast path of the runtime pay in this run?"""
    pays = ("pays", "does not pay")
    rows = []
    for rec in results["latency"]:
        st = {n: s["median"] for n, s in rec["stats"].items()}
        case = f"{rec['table']} {rec['shape']}"
        if rec["output_bytes"] <= 1 << 20:
            ratio = st[RT_NO_BINDING] / st[RT_RUN]
            rows.append(_ratio_row(f"IO binding reuse, {case}", "off/on", ratio, pays))
            share = st[VALIDATION] / st[RT_RUN]
            rows.append(
                (f"validation, {case}", f"{format_time(st[VALIDATION])} = {share:.0%} of `rt.run`", "")
            )
        else:
            ratio = st[RT_RUN] / st[RT_OUT]
            rows.append(_ratio_row(f"`out=`, {case}", "`rt.run` / `rt.run(out=)`", ratio, pays))
        if rec["output_bytes"] <= 1 << 20:
            ratio = st[RT_OUT] / st[RT_RUN]
            small = f"`out=` on a small call, {case}"
            rows.append(_ratio_row(small, "`rt.run(out=)` / `rt.run`", ratio, ("costs", "neutral")))
    st = results["streaming"]
    runs = st["run_batched"]
    ratio = runs["progress bar"]["throughput"] / runs["no progress bar"]["throughput"]
    rows.append(("tqdm progress bar in `run_batched`", f"throughput with/without = {ratio:.2f}", ""))
    same = st["single_call_throughput"].get(f"rt.run {st['batch_size']}x32")
    if same:
        ratio = runs["no progress bar"]["throughput"] / same
        rows.append(
            (
                f"`run_batched` chunking at its default {st['batch_size']}",
                f"vs single calls of that size = {ratio:.2f}",
                "",
            )
        )
    return rows


def _latency_tables(results: dict[str, Any]) -> list[str]:
    parts = []
    for rec in results["latency"]:
        stats = rec["stats"]
        rt, floor = stats[RT_RUN]["median"], stats[FLOOR]["median"]
        rows = [
            (
                name,
                format_time(s["median"]),
                f"{format_time(s['min'])} - {format_time(s['max'])}",
                f"{s['samples']} x {s['calls_per_sample']}",
                f"{s['median'] / rt:.3g}",
                f"{s['median'] / floor:.3g}",
            )
            for name, s in sorted(stats.items(), key=lambda kv: kv[1]["median"])
        ]
        parts.append(
            f"### {rec['table']} table, ids {rec['shape']} ({rec['output_bytes'] / 1e6:.3g} MB of output)\n"
        )
        header = ["contender", "median", "min - max", "samples x calls", "x rt.run", "x floor"]
        parts.append(markdown_table(header, rows) + "\n")
    return parts


def plot(results: dict[str, Any], path: Path) -> None:
    """Log-scale bars of the median latency per contender, one group per case, min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = results["latency"]
    names = [n for n in cases[0]["stats"] if n != VALIDATION]
    fig, ax = plt.subplots(figsize=(13, 6))
    width = 0.85 / len(names)
    x = np.arange(len(cases))
    for i, name in enumerate(names):
        med = np.array([c["stats"][name]["median"] for c in cases])
        lo = med - np.array([c["stats"][name]["min"] for c in cases])
        hi = np.array([c["stats"][name]["max"] for c in cases]) - med
        ax.bar(x + (i - len(names) / 2 + 0.5) * width, med, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{c['table']}\n{c['shape']}" for c in cases])
    ax.set_ylabel("seconds per call (median, min-max)")
    m = results["machine"]
    ax.set_title(f"Embedding lookup latency, {m['cores']} cores {m['cpu']}, onnxruntime {m['onnxruntime']}")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], docs: Path) -> str:
    """Write ``benchmarks.md`` and ``benchmarks.png`` into ``docs``; returns the Markdown."""
    docs.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    quick = " (`--quick`: small budgets, not the reference numbers)" if results["quick"] else ""
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` (`python -m benchmarks.compare`) on {m['date']}{quick}, "
        f"in {results['seconds']:.0f} s. All contenders return the same `table[ids]` (checked before timing); "
        "times are medians per call with the min-max spread, contenders interleaved in rounds in one process.",
        "The models are Keras 3 `Input(int64) -> Embedding` without masks (Keras `predict` and Keras's ONNX "
        "export return no mask), with random tables. Ratios are of medians.",
        "",
        "## Machine and versions",
        "",
        markdown_table(
            ["", ""],
            [(k, str(v)) for k, v in m.items()]
            + [
                (
                    "load average before / after",
                    f"{results['load_before'][0]:.2f} / {results['load_after'][0]:.2f}",
                )
            ],
        ),
        "",
        "## Targets of issue 5",
        "",
        markdown_table(
            ["target", "measured", "met"],
            [(t, v, "met" if ok else "**not met**") for t, v, ok in targets(results)],
        ),
        "",
        "## Do the fast paths pay?",
        "",
        "Ratios of medians from the tables below (> 1.05 counts as paying).",
        "",
        markdown_table(["fast path", "measured", "verdict"], fast_paths(results)),
        "",
        "## Latency per call",
        "",
        "![latency per call](benchmarks.png)",
        "",
        *_latency_tables(results),
        "## Cold start: fresh process to first result",
        "",
        "Wall time from spawning the process to its first result line (interpreter start, imports, load, "
        "first run), page cache warm; median of the runs. Peak RSS is the child's own high-water mark (`VmHWM`).",
        "",
    ]
    rows = []
    for c in results["cold_start"]:
        for key, what in (
            ("rt", "`import embed_runtime`, `load`, `rt.run`"),
            ("tf", "`import tensorflow`, `keras.models.load_model`, `predict`"),
        ):
            r = c[key]
            rows.append(
                (
                    f"{c['table']} {c['shape']}",
                    what,
                    f"{r['wall_s']:.2f} s",
                    ", ".join(f"{w:.2f}" for w in r["wall_all"]),
                    f"{r['peak_rss_mb']:.0f} MB",
                )
            )
    lines += [markdown_table(["model", "path", "wall (median)", "all runs (s)", "peak RSS"], rows), ""]
    st = results["streaming"]
    lines += [
        "## Streaming",
        "",
        f"`rt.run_batched` over {st['run_batched']['no progress bar']['sequences']:,} sequences of 32 ids "
        f"(50k x 128 table, batch_size {st['batch_size']}) in a fresh process; the ids alone are "
        f"{st['ids_mb']:.0f} MB, RSS after load and ids {st['rss_mb_loaded']:.0f} MB, peak RSS "
        f"{st['peak_rss_mb']:.0f} MB.",
        "",
    ]
    rows = [
        (
            k,
            f"{v['throughput']:,.0f} seq/s",
            f"{v['seconds']:.2f} s",
            f"{v['rss_mb_first']:.0f} / {v['rss_mb_max']:.0f} / {v['rss_mb_last']:.0f} MB",
        )
        for k, v in st["run_batched"].items()
    ]
    rows += [(f"single call {k}", f"{v:,.0f} seq/s", "", "") for k, v in st["single_call_throughput"].items()]
    lines += [markdown_table(["run", "throughput", "time", "RSS first / max / last"], rows), ""]
    lines += ['## Export: ours vs Keras `model.export(format="onnx")`', ""]
    for label, e in results["exports"].items():
        when = "cached from an earlier run" if e.get("cached") else "in this run"
        lines.append(f"- {label}: exported on {e.get('date', '?')} ({when}) with {e.get('versions', {})}")
    lines += [
        "",
        "Export time of ours includes its parity check against Keras. File bytes include external data "
        "(our exporter stores big tables beside the graph in `model.onnx.<content hash>.data`).",
        "",
    ]
    rows = []
    for label, e in results["exports"].items():
        for who, key in (("ours (`export_keras`, verified)", "ours"), ("Keras `model.export`", "keras")):
            d = e[key]
            ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in d["ops"].items())
            rows.append((label, who, str(d["nodes"]), ops, f"{d['bytes']:,}", f"{d['seconds']:.1f} s"))
    lines += [markdown_table(["model", "exporter", "nodes", "ops", "file bytes", "export time"], rows), ""]
    text = "\n".join(lines)
    path = docs / "benchmarks.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = heading_span(old, TEXT_HEADING)  # benchmarks/text_speed.py's section: its own script rewrites it
    if kept is not None:
        text = text.rstrip("\n") + "\n\n" + old[kept[0] : kept[1]]
    path.write_text(text)
    plot(results, docs / "benchmarks.png")
    return text
