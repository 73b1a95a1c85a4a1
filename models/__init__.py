"""Reference Keras Embedding models, each declared in its folder and trained by one generic trainer.

Every model lives in ``models/<name>/``: ``__init__.py`` (its :class:`ModelInfo` ``INFO``, no TensorFlow),
``train.py`` (its declaration: the layers in ``build(flavour, seed)``, the training data and its sizes, the
``compile``/``fit`` arguments and the golden-input recipe, tied up in ``RECIPE``, a
:class:`models._common.Recipe`; ``build_and_train`` and ``golden_inputs`` come from it), and the committed
artifacts ``model.onnx`` (exported with :func:`exporters.export_keras`) and ``golden.npz`` (inputs, Keras
outputs and masks). The ``text`` model takes strings: its ``train.py`` trains on them itself and its
``texts.json`` holds the golden strings, whose Keras ids ``golden.npz`` records. ``models/_common.py`` is
the generic trainer: seeding, fit, golden inputs, export and record. ``python -m models.<name>.train`` or
``python -m models.build`` regenerates the artifacts; reading them needs no TensorFlow, training and
exporting need the ``export`` extra.

:data:`NAMES` and :func:`info` describe each model without importing TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

MODELS_DIR = Path(__file__).resolve().parent
"""``models/``: one folder per reference model."""

FLAVOURS = ("keras3", "tf_keras")
"""The two Keras flavours a model can be built in: Keras 3 (TF backend) and tf-keras (Keras 2)."""


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
        text: the Keras model takes strings (a ``TextVectorization`` in front of the graph's id input):
            ``train.py`` has ``golden_texts()`` and ``keras_run(model, texts)``, ``texts.json`` the golden
            strings.
    """

    name: str
    inputs: tuple[InputInfo, ...]
    outputs: tuple[str, ...]
    masks: tuple[str, ...] = ()
    flavours: tuple[str, ...] = FLAVOURS
    committed_flavour: str = "keras3"
    atol: float = 1e-5
    atol_reason: str = ""
    text: bool = False

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

    def train_module(self) -> ModuleType:
        """``models.<name>.train``, with ``build_and_train(flavour, seed)`` and ``golden_inputs(seed)``
        (training imports TensorFlow)."""
        return importlib.import_module(f"models.{self.name}.train")


NAMES = ("seed", "classifier", "recurrent", "tagger", "recommender", "shared", "all_args", "text")
"""The reference models, in the order ``python -m models.build`` writes them."""


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of reference model ``name`` (``INFO`` in ``models/<name>/__init__.py``)."""
    if name not in NAMES:
        raise KeyError(f"no reference model {name!r}; known: {', '.join(NAMES)}")
    model_info: ModelInfo = importlib.import_module(f"models.{name}").INFO
    return model_info


def all_models() -> list[ModelInfo]:
    """Every reference model's :class:`ModelInfo`."""
    return [info(name) for name in NAMES]
