"""The mobile format: onnxruntime's ``.ort`` files and the operators a reduced onnxruntime build needs.

:func:`to_ort` runs onnxruntime's own converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``,
``Fixed`` optimization style: the optimizations are applied once, before saving) on an exported ``.onnx``.
It writes, beside it, ``<name>.ort`` (which ``embed_runtime.load`` and any onnxruntime, full or minimal,
reads; the contract's metadata is kept) and ``<name>.required_operators.config``, the file a reduced
build takes (``build.sh --minimal_build --include_ops_by_config <config>``).
:func:`required_operators` reads such a config back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx

from embed_runtime.contract import KEY_EXTERNAL_DATA

from .errors import ExportError

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
"""onnxruntime's converter module, run with ``python -m``."""


def to_ort(model: Path) -> tuple[Path, Path]:
    """Convert the exported ``model`` (an inline ``.onnx``) to ``<name>.ort`` and write the reduced build's
    ``<name>.required_operators.config`` beside it; returns both paths.

    Raises :class:`ExportError` for a model whose tables are in an external data file (the ORT format
    holds every initializer inline: export with a higher ``external_data_threshold``) and when the
    converter fails (with its last lines of output).
    """
    header = onnx.load(str(model), load_external_data=False)
    if any(p.key == KEY_EXTERNAL_DATA for p in header.metadata_props):
        raise ExportError(
            f"{model} keeps its tables in an external data file, which the ORT format cannot reference; "
            "export it with a higher --external-data-threshold (the .ort file then holds the tables)"
        )
    command = [sys.executable, "-m", CONVERTER, str(model), "--optimization_style", "Fixed"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    ort_path = model.with_suffix(".ort")
    config = model.with_suffix(".required_operators.config")
    if done.returncode != 0 or not ort_path.is_file() or not config.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ExportError(f"onnxruntime's converter could not convert {model} to the ORT format:\n{tail}")
    return ort_path, config


def required_operators(config: Path) -> dict[str, list[str]]:
    """The operators a reduced build config lists: ``{"<domain>;<opset>": [operator, ...]}`` (``#`` lines
    are comments; type-reduced entries keep only the operator name)."""
    found: dict[str, list[str]] = {}
    for line in config.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, ops = line.split(";", 2)
        names = [op.split("{", 1)[0].strip() for op in ops.split(",")]
        found.setdefault(f"{domain};{opset}", []).extend(n for n in names if n)
    return {key: sorted(set(ops)) for key, ops in found.items()}


def operators_row(name: str, config: Path) -> str:
    """The row of ``docs/edge.md``'s operator table for model ``name``: its config's operators by
    domain and opset."""
    ops = required_operators(config)
    return f"| {name} | " + "; ".join(f"`{key}`: {', '.join(names)}" for key, names in ops.items()) + " |"
