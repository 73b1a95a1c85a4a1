"""The reference models (``models/``) trained and exported once per test process, shared by the suites
that compare against Keras (``tests/parity``, ``tests/export/test_fixtures_current.py``).

Needs the repository root on ``sys.path`` (``models`` is a folder of the repository, not a package) and
the ``export`` extra.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import models
from exporters import ExportReport, export_keras


@functools.cache
def trained(name: str, flavour: str = "keras3", seed: int = 0) -> Any:
    """Reference model ``name`` in ``flavour``, trained from ``seed`` (``models/<name>/train.py``), once per
    process."""
    return models.info(name).train_module().build_and_train(flavour, seed)


@functools.cache
def exported(name: str, flavour: str = "keras3", seed: int = 0) -> tuple[Path, ExportReport]:
    """``trained(name, flavour, seed)`` exported once per process to a temporary folder removed at exit:
    ``(onnx path, export report)``."""
    folder = Path(tempfile.mkdtemp(prefix=f"embed-{name}-{flavour}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "model.onnx"
    return path, export_keras(trained(name, flavour, seed), path)
