"""``benchmarks/_docs.py``: the benchmark scripts' one way of rewriting their part of a document, the rest
kept byte for byte (between markers, or under a ``## `` heading)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "_docs.py"
BEGIN, END = "<!-- figures: x.py -->", "<!-- /figures -->"


@pytest.fixture(scope="module")
def docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_text_between_the_markers_is_replaced(docs: ModuleType) -> None:
    doc = f"# Edge\n\nbefore\n\n{BEGIN}\nold numbers\n{END}\n\n## Browser\n\nafter\n"
    new = docs.replace_between(doc, BEGIN, END, "\n## Figures\n\nnew numbers\n")
    assert new == f"# Edge\n\nbefore\n\n{BEGIN}\n## Figures\n\nnew numbers\n{END}\n\n## Browser\n\nafter\n"
    assert docs.replace_between(new, BEGIN, END, "## Figures\n\nnew numbers") == new


def test_markers_are_appended_once_then_replaced(docs: ModuleType) -> None:
    first = docs.replace_between("# Edge\n\ntext\n\n", BEGIN, END, "one")
    assert first == f"# Edge\n\ntext\n\n{BEGIN}\none\n{END}\n"
    assert docs.replace_between(first, BEGIN, END, "two") == f"# Edge\n\ntext\n\n{BEGIN}\ntwo\n{END}\n"


def test_an_unclosed_marker_is_refused(docs: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"'<!-- figures: x.py -->' has no closing '<!-- /figures -->'"):
        docs.replace_between(f"# Edge\n{BEGIN}\nhalf\n{END.upper()}\n", BEGIN, END, "x")


def test_write_between_rewrites_the_file(docs: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    path.write_text(f"é {BEGIN}\nold\n{END} ü\n", encoding="utf-8")
    docs.write_between(path, BEGIN, END, "ß")
    assert path.read_bytes() == f"é {BEGIN}\nß\n{END} ü\n".encode()


def test_heading_span_runs_to_the_next_section_or_the_end(docs: ModuleType) -> None:
    doc = "# T\n\n## A\n\na\n\n## B\n\nb\n### B.1\n\n## C\nc"
    assert docs.heading_span(doc, "## B") == (doc.index("## B"), doc.index("## C"))
    assert docs.heading_span(doc, "## C") == (doc.index("## C"), len(doc))
    assert docs.heading_span(doc, "## Z") is None
    assert docs.heading_span(doc, "## ") is None  # a whole line, not a prefix of one
