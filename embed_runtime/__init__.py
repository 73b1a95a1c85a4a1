"""embed_runtime: run exported Keras Embedding models under onnxruntime with numpy only, no TensorFlow.

>>> import embed_runtime
>>> rt = embed_runtime.load("model.onnx")          # doctest: +SKIP
>>> rt.run([[4, 20, 0]])["mask"]                    # doctest: +SKIP
array([[ True,  True, False]])
"""

from __future__ import annotations

from .contract import EmbeddingInfo, ModelMetadata
from .errors import (
    EmbedRuntimeError,
    InferenceError,
    InputTypeError,
    InvalidInputError,
    ModelLoadError,
    ProviderError,
)
from .inputs import TensorSpec
from .runtime import Runtime, load
from .session import RuntimeOptions, available_providers

__version__ = "0.1.0"
"""The package version (pyproject.toml reads it from here; no importlib.metadata look-up at import)."""

__all__ = [
    "EmbedRuntimeError",
    "EmbeddingInfo",
    "InferenceError",
    "InputTypeError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelMetadata",
    "ProviderError",
    "Runtime",
    "RuntimeOptions",
    "TensorSpec",
    "__version__",
    "available_providers",
    "load",
]
