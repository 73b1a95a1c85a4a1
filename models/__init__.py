"""Reference Keras Embedding models, each with a seeded build-and-train script and committed artifacts.

Every model lives in ``models/<name>/``: ``train.py`` (``build_and_train(flavour, seed)`` and ``main()``),
``model.onnx`` (exported with :func:`exporters.export_keras`) and ``golden.npz`` (inputs, Keras outputs
and masks). ``python -m models.build`` regenerates all artifacts. The artifacts need no TensorFlow to
read; training and exporting need the ``export`` extra.

:data:`REFERENCE_MODELS` describes each model without importing TensorFlow.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class InputInfo:
    """One id input of a reference model: its name, its vocabulary size and its static length."""

    name: str
    vocab: int
    length: int | None


@dataclass(frozen=True)
class ModelInfo:
    """What tests and tools need to know about a reference model, without TensorFlow.

    Attributes:
        name: folder name under ``models/``.
        inputs: the graph inputs, in the order the Keras model takes them.
        outputs: the Keras output names (mask outputs come on top, see ``masks``).
        masks: the mask output names the exported graph has (empty without ``mask_zero``).
        flavours: the Keras flavours the architecture is built in.
        committed_flavour: the flavour the committed ``model.onnx`` / ``golden.npz`` come from.
        atol: absolute tolerance of float outputs against Keras.
        atol_reason: why ``atol`` is not the default 1e-5 (empty when it is).
    """

    name: str
    inputs: tuple[InputInfo, ...]
    outputs: tuple[str, ...]
    masks: tuple[str, ...] = ()
    flavours: tuple[str, ...] = ("keras3", "tf_keras")
    committed_flavour: str = "keras3"
    atol: float = 1e-5
    atol_reason: str = ""

    @property
    def folder(self) -> Path:
        """``models/<name>/``."""
        return MODELS_DIR / self.name

    @property
    def onnx_path(self) -> Path:
        """The committed ``model.onnx``."""
        return self.folder / "model.onnx"

    @property
    def golden_path(self) -> Path:
        """The committed ``golden.npz``."""
        return self.folder / "golden.npz"

    @property
    def dynamic_length(self) -> bool:
        """True when some input has a dynamic sequence length."""
        return any(i.length is None for i in self.inputs)

    def train_module(self) -> Any:
        """``models.<name>.train`` (imports TensorFlow)."""
        return importlib.import_module(f"models.{self.name}.train")


NAMES = ("seed", "classifier", "recurrent", "tagger", "recommender", "shared", "all_args")
"""The reference models, in the order ``python -m models.build`` writes them."""


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of reference model ``name`` (``INFO`` in ``models/<name>/__init__.py``)."""
    if name not in NAMES:
        raise KeyError(f"no reference model {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"models.{name}").INFO


def all_models() -> list[ModelInfo]:
    """Every reference model's :class:`ModelInfo`."""
    return [info(name) for name in NAMES]


@functools.cache
def trained(name: str, flavour: str = "keras3", seed: int = 0) -> Any:
    """``build_and_train(flavour, seed)`` of model ``name``, cached per process so that test modules
    share one training run."""
    return info(name).train_module().build_and_train(flavour=flavour, seed=seed)


@functools.cache
def exported(name: str, flavour: str = "keras3", seed: int = 0) -> tuple[Path, Any]:
    """Export ``trained(name, flavour, seed)`` once per process to a temporary folder.

    Returns ``(onnx path, ExportReport)``; tests share it so that each model is exported once per flavour.
    """
    import atexit
    import shutil
    import tempfile

    from exporters import export_keras

    folder = Path(tempfile.mkdtemp(prefix=f"embed-{name}-{flavour}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "model.onnx"
    report = export_keras(trained(name, flavour, seed), path)
    return path, report
