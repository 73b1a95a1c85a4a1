"""The package's exceptions.

Every error the runtime raises on purpose is an :class:`EmbedRuntimeError`, so a caller (or the server)
can catch one class. Input and configuration problems are also ``ValueError`` or ``TypeError`` so that
code written for plain numpy conventions keeps working.
"""

from __future__ import annotations


class EmbedRuntimeError(Exception):
    """Base class of every error raised on purpose by ``embed_runtime``."""


class InvalidInputError(EmbedRuntimeError, ValueError):
    """An input has the right type but a wrong value: an id out of range, a wrong rank or length,
    a missing or unknown input name."""


class InputTypeError(EmbedRuntimeError, TypeError):
    """An input has a type the model cannot take: floats, bools, strings, objects."""


class ConfigurationError(EmbedRuntimeError, ValueError):
    """A setting of the runtime has an invalid value: a :class:`~embed_runtime.RuntimeOptions` field or
    the ``batch_size`` of :meth:`~embed_runtime.Runtime.run_batched`. Not about the ids of a request."""


class ModelLoadError(EmbedRuntimeError):
    """The model file is missing, is not ONNX, is truncated, or points at data it may not read."""


class ProviderError(EmbedRuntimeError, RuntimeError):
    """An explicitly requested execution provider is not available or was dropped by onnxruntime."""


class InferenceError(EmbedRuntimeError, RuntimeError):
    """onnxruntime failed while running a model on inputs that passed validation."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnxruntime's run on for pages), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
