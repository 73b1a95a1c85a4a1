"""How the benchmark scripts rewrite their own part of a ``docs/*.md`` file and keep the rest byte for
byte: the text between two HTML-comment markers (:func:`replace_between`, :func:`write_between`), or the
``## `` section under a heading (:func:`heading_span`)."""

from __future__ import annotations

from pathlib import Path


def replace_between(doc: str, begin: str, end: str, text: str) -> str:
    """``doc`` with what lies between the markers ``begin`` and ``end`` replaced by ``text`` (stripped, on
    lines of its own), everything else kept; when ``doc`` has no ``begin``, both markers around ``text``
    are appended after a blank line. Raises ``ValueError`` when ``begin`` has no ``end`` after it."""
    if begin not in doc:
        return f"{doc.rstrip()}\n\n{begin}\n{text.strip()}\n{end}\n"
    head, _, rest = doc.partition(begin)
    if end not in rest:
        raise ValueError(f"{begin!r} has no closing {end!r}; fix the markers by hand")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{text.strip()}\n{end}{tail}"


def write_between(path: Path, begin: str, end: str, text: str) -> None:
    """:func:`replace_between` on the UTF-8 file ``path``, read right before it is written."""
    path.write_text(replace_between(path.read_text(encoding="utf-8"), begin, end, text), encoding="utf-8")


def heading_span(doc: str, heading: str) -> tuple[int, int] | None:
    """``(start, stop)`` of the section of ``doc`` under the line ``heading`` (``## ...``): from that line
    up to the next ``## `` heading, or to the end of ``doc``; ``None`` when ``doc`` has no such line."""
    start = doc.find(heading + "\n")
    if start < 0:
        return None
    end = doc.find("\n## ", start + len(heading))
    return start, end + 1 if end >= 0 else len(doc)
