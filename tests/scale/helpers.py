"""What the ``tests/scale`` modules share: paths, and ``benchmarks/ray_batch.py`` loaded as a module.

Ray's environment (no usage reporting, loopback only) is set by ``conftest.py`` before any test module
imports Ray.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import ray
import ray.data

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CLASSIFIER = str(MODELS / "classifier" / "model.onnx")
"""Masked classifier: ``token_ids`` (batch, sequence) in [0, 50), ragged rows padded with 0."""


def _bench() -> ModuleType:
    """``benchmarks/ray_batch.py`` (a script, not a package) as the module ``ray_batch``; Ray pickles its
    classes by value, so actors need not import it."""
    spec = importlib.util.spec_from_file_location("ray_batch", ROOT / "benchmarks" / "ray_batch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_batch"] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


bench = _bench()
