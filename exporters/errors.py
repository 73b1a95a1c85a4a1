"""The exporter's one exception type."""

from __future__ import annotations


class ExportError(Exception):
    """Export failed; the message says what was wrong and what to do. No output file is left behind."""
