"""Parity suite fixtures: reference models trained and exported once per flavour, shared by all tests.

Training and exporting need TensorFlow (the ``export`` extra); tests that need it are marked ``tf`` and
skip when TensorFlow is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `import models, tests.reference` under plain `pytest` too
    sys.path.insert(0, str(ROOT))


class Exported:
    """One reference model in one flavour: the trained Keras model, its ONNX file, the runtime, the report."""

    def __init__(self, name: str, flavour: str) -> None:
        import models
        from embed_runtime import load
        from tests.reference import exported, trained

        self.info = models.info(name)
        self.flavour = flavour
        self.model = trained(name, flavour)
        self.path, self.report = exported(name, flavour)
        self.runtime = load(self.path, providers="cpu")
        self.model_module = self.info.train_module()

    def keras(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keras ``predict`` outputs and ``compute_mask`` masks, named like the graph outputs."""
        from models._common import keras_masks, keras_predict

        want = keras_predict(self.model, [i.name for i in self.info.inputs], self.info.outputs, feeds)
        want.update(keras_masks(self.model, self.path, feeds))
        return want

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``embed_runtime``'s outputs for ``feeds`` (a dict for several inputs, the array for one)."""
        args: Any = feeds if len(feeds) > 1 else next(iter(feeds.values()))
        return self.runtime.run(args)


@pytest.fixture(scope="session")
def exported() -> Any:
    """``exported(name, flavour)`` -> :class:`Exported`, built once per session."""
    import tensorflow  # noqa: F401  (the full environment has the export extra: a broken install must fail)
    import tf2onnx  # noqa: F401

    cache: dict[tuple[str, str], Exported] = {}

    def get(name: str, flavour: str) -> Exported:
        if (name, flavour) not in cache:
            cache[name, flavour] = Exported(name, flavour)
        return cache[name, flavour]

    return get


def assert_parity(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float, where: str = ""
) -> None:
    """Same output names and shapes; floats within ``atol`` absolute; masks bool and exactly equal."""
    assert set(got) == set(want), f"{where}: runtime outputs {sorted(got)} != Keras {sorted(want)}"
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, f"{where}: {name} shape {actual.shape} != {expected.shape}"
        if expected.dtype == np.bool_:
            assert actual.dtype == np.bool_, f"{where}: mask {name} has dtype {actual.dtype}"
            np.testing.assert_array_equal(actual, expected, err_msg=f"{where}: mask {name}")
        else:
            np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=f"{where}: {name}")
