"""``benchmarks/edge_compare.py``'s report (``benchmarks/edge_report.py``) on synthetic numbers: the paired
table, the prose on the 1x16 target, the section written between its markers (their rules:
tests/bench/test_docs.py) and the plot. Neither TensorFlow nor LiteRT is needed: only the pure-Python parts run here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "edge_report.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edge_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_report"] = module  # dataclasses look their module up
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))  # its sibling _docs, as benchmarks/edge_compare.py finds it
        spec.loader.exec_module(module)
    return module


def synthetic(bench: ModuleType) -> list[object]:
    row = bench.Row
    return [
        row("seed", "float32", "LiteRT", 1000, 0.010, 0.01, 2e-6, 4e-6, 0.0),
        row("seed", "float32", "embed_runtime", 900, 0.020, 0.1, 3e-6, 5e-6, 0.0, 1.5e-6, "onnxruntime"),
        row("seed", "int8", "LiteRT", 300, 0.012, 0.01, 2e-6, 4e-6, 2.5e-3),
        row("seed", "int8", "embed_runtime", 250, 0.015, 0.1, 1e-6, 6e-6, 1.25e-4, 0.5e-6, "numpy lookup"),
        row("1M x 64", "int8", "LiteRT", 64_000_000, 0.5, 0.01, 4e-6, 8e-6, 0.1),  # no partner: left out
    ]


def test_markdown_pairs_the_engines(bench: ModuleType) -> None:
    lines = bench.markdown(synthetic(bench)).splitlines()
    assert len(lines) == 4  # header, rule, one line per (model, dtype) that has both engines
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["seed", "float32", "1,000 / 900", "10 ms / 20 ms", "2 us / 3 us", "4 us / 5 us",
                     "1.50", "1.5 us", "onnxruntime", "0.00e+00 / 0.00e+00"]  # fmt: skip
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[6] == "0.50" and cells[8] == "numpy lookup" and cells[9] == "2.50e-03 / 1.25e-04"


def test_prose_says_which_artifacts_meet_the_target_and_why_the_others_miss(bench: ModuleType) -> None:
    rows = synthetic(bench)
    assert bench.target_text(rows) == (
        "**The 1x16 target** (ours no slower than LiteRT): met by seed int8; missed by seed float32 "
        "(1.50x on onnxruntime, whose floor alone is 0.75x LiteRT's call)."
    )
    variants = bench.Variants("classifier", {"default": 5e-6, "basic": 6e-6}, {"Gather": 1, "Mul": 2})
    gap = bench.gap_text(rows, variants)
    assert gap.startswith("The runtime answers seed int8 on its numpy lookup path")
    assert "its floor alone (`run_with_iobinding`" in gap and "takes 0.75-0.75x LiteRT's whole call" in gap
    assert "adds 1.5-1.5 us" in gap
    assert "The classifier is 3 onnxruntime nodes (Gather, Mul x2)" in gap
    assert gap.endswith("1x16 floor (interleaved): default 5 us; basic 6 us.")


def test_write_doc_writes_section_and_plot(bench: ModuleType, tmp_path: Path) -> None:
    doc, image = tmp_path / "edge.md", tmp_path / "edge-litert.png"
    doc.write_text("# Edge\n\n## Browser\n\nkept\n")
    bench.write_doc(synthetic(bench), 12.0, doc, image)
    text = doc.read_text()
    assert text.startswith("# Edge\n\n## Browser\n\nkept\n\n" + bench.BEGIN + "\n## Against LiteRT\n")
    assert text.endswith(bench.END + "\n") and "| seed | int8 | 300 / 250 |" in text
    assert "whole run 12 s" in text and "![embed_runtime vs LiteRT](edge-litert.png)" in text
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
