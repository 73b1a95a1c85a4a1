"""The figures of ``benchmarks/ray_batch.py``: the contenders' names, one table per model with the
command's fixed start-up and marginal rate, each actor's peak memory, the shared table, and the section
of ``docs/scale-out.md`` between its markers, rewritten and nothing else."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import onnxruntime
import pyarrow as pa
import ray
from _docs import write_between

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale-out.md"
BEGIN, END = "<!-- figures: benchmarks/ray_batch.py -->", "<!-- /figures -->"
MIB = 1 << 20
BATCH = 8192
ONE_COMPUTE, ONE_JOB = "one process, compute", "one process, same job"
"""The two baselines: ``run_batched`` on ids in memory; Parquet in, ``run_batched``, Parquet out."""
ONE_ACTOR, TWO_ACTORS = "embed-runtime batch, 1 actor", "embed-runtime batch, 2 actors x 0.5 CPU"
SMALL = "embed-runtime batch, 1 actor, a tenth of the rows"
Runs = dict[str, list[dict[str, Any]]]


def _rates(results: list[dict[str, Any]]) -> list[float]:
    return [r["rows"] / r["s"] for r in results]


def split_fixed(big: list[dict[str, Any]], small: list[dict[str, Any]]) -> tuple[float, float]:
    """Fixed start-up seconds and marginal rows/s of the command, from the medians at two sizes."""
    t_big, t_small = (statistics.median(r["s"] for r in rs) for rs in (big, small))
    marginal = (big[0]["rows"] - small[0]["rows"]) / (t_big - t_small)
    return t_small - small[0]["rows"] / marginal, marginal


def model_figures(model: str, runs: Runs) -> list[str]:
    """One model's table (each contender against that model's two one-process baselines) and the
    command's fixed start-up and marginal rate."""
    mine = {name.partition(": ")[2]: rs for name, rs in runs.items() if name.startswith(f"{model}: ")}
    rate = {name: statistics.median(_rates(rs)) for name, rs in mine.items()}
    job, compute = rate[ONE_JOB], rate[ONE_COMPUTE]
    fixed, marginal = split_fixed(mine[ONE_ACTOR], mine[SMALL])
    lines = [
        f"Model `{model}`:",
        "",
        f"| contender | rows | rows/s | min - max | vs {ONE_JOB} | vs {ONE_COMPUTE} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rs in mine.items():
        each = _rates(rs)
        lines.append(
            f"| {name} | {rs[0]['rows']:,} | {rate[name]:,.0f} | {min(each):,.0f} - {max(each):,.0f} | "
            f"{rate[name] / job:.0%} | {rate[name] / compute:.0%} |"
        )
    return [
        *lines,
        "",
        f"From the 1-actor runs at {mine[SMALL][0]['rows']:,} and {mine[ONE_ACTOR][0]['rows']:,} rows: a "
        f"fixed start-up of **{fixed:.1f} s** and a marginal **{marginal:,.0f} rows/s** "
        f"(**{marginal / job:.0%}** of one process doing the same job, {marginal / compute:.0%} of its "
        "compute alone).",
        "",
    ]


def figures(args: argparse.Namespace, runs: Runs, shared: dict[str, Any]) -> str:
    """The Markdown of the figures section."""
    lines = [
        f"Measured by `python benchmarks/ray_batch.py --rows {args.rows} --length {args.length} --rounds "
        f"{args.rounds}` on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}, "
        f"{platform.system()} {platform.release()}; a VM shared with other work: load average "
        f"{args.load:.1f} before the run), batches of {BATCH:,} rows, {args.length} ids a row; Python "
        f"{platform.python_version()}, Ray {ray.__version__}, pyarrow {pa.__version__}, onnxruntime "
        f"{onnxruntime.__version__}. Medians of {args.rounds} interleaved rounds (min - max). "
        f"`{ONE_COMPUTE}`: `run_batched` over the ids already in one array; `{ONE_JOB}`: read the Parquet, "
        "`run_batched`, write the same columns as Parquet. The command's figure is its own: read -> "
        "predict -> write inside Ray, Ray's start excluded; the whole command adds Python, Ray's start "
        "and stop.",
        "",
    ]
    for model in dict.fromkeys(name.partition(": ")[0] for name in runs):
        lines += model_figures(model, runs)
    lines += [
        "Each actor's peak memory during the command (MiB):",
        "",
        "| run | actor | peak RSS | peak anonymous |",
        "|---|---:|---:|---:|",
    ]
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            for j, actor in enumerate(r.get("actors", [])):
                lines.append(
                    f"| {name}, round {i + 1} | {j + 1} | {actor['rss'] / MIB:.0f} | {actor['anonymous'] / MIB:.0f} |"
                )
    size = shared["table_bytes"] / MIB
    lines += [
        "",
        f"Shared table: a {size:.0f} MiB external-data table, 2 actors, each looking up every 4 KiB page "
        "(MiB; growth from before the model loads to after the actor's last batch):",
        "",
        "| actor | anonymous growth | file-backed growth | Pss of files after | anonymous total |",
        "|---:|---:|---:|---:|---:|",
    ]
    for j, actor in enumerate(shared["actors"]):
        lines.append(
            f"| {j + 1} | {actor['anonymous'] / MIB:.1f} ({actor['anonymous'] / shared['table_bytes']:.0%} of "
            f"the table) | {actor['file'] / MIB:.0f} | {actor['pss_file'] / MIB:.0f} | "
            f"{actor['anonymous_total'] / MIB:.0f} |"
        )
    return "\n".join(lines)


def write_doc(text: str) -> None:
    """Replace the figures section of docs/scale-out.md (between its markers) with ``text``."""
    write_between(DOC, BEGIN, END, text)
