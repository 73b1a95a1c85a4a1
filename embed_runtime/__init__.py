"""embed_runtime: run exported Keras Embedding models under onnxruntime with numpy only, no TensorFlow.

>>> import embed_runtime
>>> rt = embed_runtime.load("model.onnx")          # doctest: +SKIP
>>> rt.run([[4, 20, 0]])["mask"]                    # doctest: +SKIP
array([[ True,  True, False]])

Where things live:

* ``runtime``: :class:`Runtime` and :func:`load`, the story of a call (validate, run, result);
* ``inputs``: validation of what users pass (the one id check is ``RangePlan.check``);
* ``binding``: IO-binding reuse for repeated shapes (the hot path) and ``out=`` runs;
* ``lookup``: outputs the exporter proved to be bare Embedding lookups, answered by numpy from a table
  read out of the model at load and checked byte for byte against onnxruntime;
* ``text``: strings -> ids by an artifact's declared text spec; ``conversion``: lists to arrays;
* ``device``: ``run(..., device_outputs=True)``: outputs left on the device as ``OrtValue``s (DLPack);
* ``providers``: execution providers, plugin EPs as table rows, the "auto" choice, session creation;
* ``options``: :class:`RuntimeOptions` and the onnxruntime ``SessionOptions`` made from them;
* ``tensors``: :class:`TensorInfo` (one graph input or output) and onnxruntime dtypes;
* ``batching``: the chunking of ``Runtime.run_batched``;
* ``contract``: the ONNX artifact contract shared with the exporter; ``errors``: the exceptions;
* ``cli``, ``cli_common``, ``bench``, ``timing``, ``serve``: the ``embed-runtime`` command line and its
  shared plumbing, the benchmark and its timing library, the HTTP server.
"""

from __future__ import annotations

from .contract import EmbeddingInfo, ModelMetadata
from .device import DeviceOutputs
from .errors import (
    ConfigurationError,
    EmbedRuntimeError,
    InferenceError,
    InputTypeError,
    InvalidInputError,
    ModelLoadError,
    ProviderError,
)
from .options import RuntimeOptions
from .providers import available_providers
from .runtime import Runtime, load
from .tensors import TensorInfo

TensorSpec = TensorInfo
"""The old name of :class:`TensorInfo`, kept so that existing imports work."""

__version__ = "0.1.0"
"""The package version (pyproject.toml reads it from here; no importlib.metadata look-up at import)."""

__all__ = [
    "ConfigurationError",
    "DeviceOutputs",
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
    "TensorInfo",
    "TensorSpec",
    "__version__",
    "available_providers",
    "load",
]
