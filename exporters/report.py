"""What an export wrote and measured: :class:`ExportReport`, whose ``str`` is the summary ``embed-export``
prints."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from embed_runtime.contract import EmbeddingInfo

from .rewrite import opset_of
from .verify import Parity
from .writers import Written

IoRow = tuple[str, str, list[int | str]]
"""(name, numpy dtype name, dims) of one graph input or output; a dim is a size or an axis name."""


@dataclass
class ExportReport:
    """What :func:`exporters.export_keras` wrote and measured; ``print(report)`` gives a readable summary."""

    path: Path
    flavour: str
    inputs: list[IoRow]
    outputs: list[IoRow]
    opset: int
    ir_version: int
    node_count: int
    op_counts: dict[str, int]
    file_bytes: int
    seconds: float
    embeddings: list[EmbeddingInfo]
    parity: Parity | None
    rewrite_max_abs_diff: float | None
    versions: dict[str, str] = field(default_factory=dict)
    external_data: Path | None = None
    external_data_bytes: int = 0
    sha256: str = ""
    """Hex sha256 of the ``.onnx`` file written: one model exported twice gives the same."""
    external_data_sha256: str | None = None
    """Hex sha256 of the external data file as the ``.onnx`` records it, None when there is none."""

    def __str__(self) -> str:
        def shape(dims: list[int | str]) -> str:
            return "(" + ", ".join(str(d) for d in dims) + ")"

        lines = [f"exported {self.path} ({self.file_bytes:,} bytes, {self.seconds:.2f} s, {self.flavour})"]
        lines.append(f"  sha256 {self.sha256}")
        if self.external_data is not None:
            lines.append(
                f"  tables in {self.external_data.name} ({self.external_data_bytes:,} bytes, mmap-aligned, "
                f"sha256 {self.external_data_sha256})"
            )
        lines += [f"  input  {n}: {t}{shape(d)}" for n, t, d in self.inputs]
        lines += [f"  output {n}: {t}{shape(d)}" for n, t, d in self.outputs]
        ops = ", ".join(f"{op} x{c}" if c > 1 else op for op, c in self.op_counts.items())
        lines.append(f"  opset {self.opset}, IR {self.ir_version}, {self.node_count} nodes: {ops}")
        for emb in self.embeddings:
            source = f"ids from {', '.join(emb.inputs)}" if emb.inputs else "ids computed in the model"
            stored = "" if emb.table_dtype in ("float32", emb.dtype) else f" stored as {emb.table_dtype}"
            stored += f" ({emb.quantization})" if emb.quantization else ""
            lines.append(
                f"  embedding {emb.layer}: {emb.input_dim} x {emb.output_dim} {emb.dtype}{stored}, {source}"
                + (f", mask -> {emb.mask_output}" if emb.mask_output else "")
            )
        if self.parity is None:
            lines.append("  parity: not verified (--no-verify)")
        else:
            diffs = (
                ", ".join(f"{k} {v:.2e}" for k, v in self.parity.max_abs_diff.items()) or "no float outputs"
            )
            masks = "masks equal" if self.parity.equal_masks else "no masks"
            lines.append(
                f"  parity vs Keras over {self.parity.cases} cases: max |onnx - keras| {diffs}; {masks}"
            )
            if self.parity.exact_max_abs_diff is not None:
                lines.append(
                    "  vs Keras holding the dequantized tables: max |diff| "
                    f"{self.parity.exact_max_abs_diff:.2e}"
                )
            lines += [f"  {table}" for table in self.parity.tables]
        if self.rewrite_max_abs_diff is not None:
            lines.append(f"  rewrite vs raw tf2onnx graph: max |diff| {self.rewrite_max_abs_diff:.1e}")
        return "\n".join(lines)


def io_rows(values: Iterable[onnx.ValueInfoProto]) -> list[IoRow]:
    """(name, dtype, dims) of each graph input or output."""
    rows = []
    for v in values:
        t = v.type.tensor_type
        dims: list[int | str] = [d.dim_param or d.dim_value for d in t.shape.dim]
        rows.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
    return rows


def op_counts(nodes: Iterable[onnx.NodeProto]) -> dict[str, int]:
    """How many nodes of each op type, sorted by name."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def make_report(
    path: Path,
    flavour: str,
    graph: onnx.ModelProto,
    embeddings: list[EmbeddingInfo],
    checks: tuple[Parity, float] | None,
    versions: dict[str, str],
    written: Written,
    start: float,
) -> ExportReport:
    """The report of the files just written at ``path`` from ``graph``; ``checks`` is (parity, rewrite
    difference), None when the export was not verified. Sizes and checksums are the writer's (``written``),
    measured from the bytes it wrote, not read back: another export to the same path may already have
    replaced (and unlinked) the files by now."""
    parity, rewrite_diff = checks if checks is not None else (None, None)
    data = written.data
    return ExportReport(
        path=path,
        flavour=flavour,
        inputs=io_rows(graph.graph.input),
        outputs=io_rows(graph.graph.output),
        opset=opset_of(graph),
        ir_version=graph.ir_version,
        node_count=len(graph.graph.node),
        op_counts=op_counts(graph.graph.node),
        file_bytes=written.size,
        seconds=time.perf_counter() - start,
        embeddings=embeddings,
        parity=parity,
        rewrite_max_abs_diff=rewrite_diff,
        versions=versions,
        external_data=written.external_data,
        external_data_bytes=data.bytes if data is not None else 0,
        sha256=written.sha256,
        external_data_sha256=data.sha256 if data is not None else None,
    )
