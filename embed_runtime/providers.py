"""Execution providers: the tables, plugin execution providers, the ``"auto"`` choice, and
:func:`create_session`, which checks what onnxruntime really uses.

Provider resolution follows onnxruntime's own conventions but checks the result: onnxruntime only warns
when a requested provider is missing and silently falls back to the CPU, so :func:`create_session`
compares what was asked with :meth:`onnxruntime.InferenceSession.get_providers` afterwards.

Plugin execution providers (shipped as separate Python packages holding a shared library) are rows of
:data:`PLUGIN_EPS`; supporting another one is one more row (and its stand-in name in :data:`ALIASES`
and :data:`AUTO_ORDER` when it should have a short name or be chosen by ``"auto"``).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias

import onnxruntime as ort

from .errors import ModelLoadError, ProviderError, first_line
from .options import RuntimeOptions, session_options

logger = logging.getLogger("embed_runtime")

CPU = "CPUExecutionProvider"

AUTO_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "WebGpuExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    CPU,
)
"""Preference order of ``providers="auto"``; the first available one is used, with the CPU behind it.
A plugin EP appears under its :attr:`PluginEP.provider` stand-in name (its real name comes from the plugin)."""

ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
}
"""Short names accepted wherever a provider name is."""

ProviderRequest: TypeAlias = "str | tuple[str, dict[str, Any]]"
"""One requested provider: its name, or ``(name, provider options)``."""
Providers: TypeAlias = "str | Sequence[ProviderRequest]"
"""The ``providers`` argument: ``"auto"``, one name, or a list of :data:`ProviderRequest`."""


@dataclass(frozen=True)
class PluginEP:
    """A plugin execution provider: a Python package that ships the EP's shared library.

    Attributes:
        provider: the stand-in name used in :data:`ALIASES` and :data:`AUTO_ORDER`.
        module: the package to import; the plugin counts as installed when it imports.
        registration_name: the name the library is registered under with onnxruntime.
        library_path: the package's function returning the shared library's path.
        ep_name: the package's function returning the EP's real name (as onnxruntime reports it).
        device_filter: which of the EP's ``OrtEpDevice`` objects may be used (``None``: any; the first
            one that passes is used).
    """

    provider: str
    module: str
    registration_name: str
    library_path: str = "get_library_path"
    ep_name: str = "get_ep_name"
    device_filter: Callable[[Any], bool] | None = None


PLUGIN_EPS: tuple[PluginEP, ...] = (
    PluginEP(provider="WebGpuExecutionProvider", module="onnxruntime_ep_webgpu", registration_name="webgpu"),
)
"""The plugin EPs this package knows; each is used when its package is installed."""

_register_lock = threading.Lock()
_registered: set[str] = set()
"""Registration names of the plugin libraries already registered with onnxruntime (once per process)."""


def _installed(plugin: PluginEP) -> ModuleType | None:
    """The plugin's package when it is installed, else ``None``."""
    try:
        return importlib.import_module(plugin.module)
    except ImportError:
        return None


def _ep_name(plugin: PluginEP, package: ModuleType) -> str:
    return str(getattr(package, plugin.ep_name)())


def _installed_plugins() -> list[tuple[PluginEP, ModuleType, str]]:
    """``(row, package, real EP name)`` of each installed plugin, in table order."""
    found = []
    for plugin in PLUGIN_EPS:
        package = _installed(plugin)
        if package is not None:
            found.append((plugin, package, _ep_name(plugin, package)))
    return found


def _plugin_device(plugin: PluginEP, package: ModuleType, name: str) -> Any | None:
    """Register the plugin's library once and return the ``OrtEpDevice`` to use, if there is one."""
    with _register_lock:
        if plugin.registration_name not in _registered:
            try:
                library = getattr(package, plugin.library_path)()
                ort.register_execution_provider_library(plugin.registration_name, library)
            except Exception as exc:  # onnxruntime raises plain RuntimeError/Fail types here
                logger.warning("could not register the plugin execution provider %s: %s", name, exc)
                return None
            _registered.add(plugin.registration_name)
    accept = plugin.device_filter
    return next(
        (d for d in ort.get_ep_devices() if d.ep_name == name and (accept is None or accept(d))), None
    )


def available_providers() -> list[str]:
    """Execution providers this onnxruntime can use, with the real names of installed plugin EPs first."""
    names = list(ort.get_available_providers())
    plugins = [name for _, _, name in _installed_plugins() if name not in names]
    return plugins + names


def canonical_name(name: str) -> str:
    """The onnxruntime name of a provider given by full name or short alias (``"cuda"``); a plugin EP's
    stand-in name becomes the plugin's real name when it is installed."""
    full = ALIASES.get(name.lower(), name)
    for plugin in PLUGIN_EPS:
        if full == plugin.provider:
            package = _installed(plugin)
            if package is not None:
                return _ep_name(plugin, package)
    return full


def _name(request: ProviderRequest) -> str:
    return request if isinstance(request, str) else request[0]


def resolve_providers(providers: Providers) -> tuple[list[ProviderRequest], bool]:
    """Turn the ``providers`` argument into an explicit list; the bool says whether it was ``"auto"``.

    ``"auto"`` gives the best available provider of :data:`AUTO_ORDER` followed by the CPU.
    Raises :class:`ProviderError` for an explicit name that this onnxruntime does not offer.
    """
    available = available_providers()
    if isinstance(providers, str) and providers.lower() == "auto":
        for candidate in AUTO_ORDER:
            name = canonical_name(candidate)
            if name in available:
                return ([name, CPU] if name != CPU else [CPU]), True
        return [CPU], True
    requests: Sequence[ProviderRequest] = [providers] if isinstance(providers, str) else providers
    resolved: list[ProviderRequest] = []
    for request in requests:
        name = canonical_name(_name(request))
        if name not in available:
            raise ProviderError(
                f"execution provider {name!r} was requested but is not available in this onnxruntime "
                f"{ort.__version__}; available: {', '.join(available)}"
            )
        resolved.append(name if isinstance(request, str) else (name, dict(request[1])))
    if not resolved:
        raise ProviderError("the providers list is empty; pass 'auto' or at least one provider name")
    return resolved, False


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """The model path as a ``Path``, or :class:`ModelLoadError` if it is missing or not a regular file."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        hint = f" (did you mean {p / 'model.onnx'}?)" if (p / "model.onnx").is_file() else ""
        raise ModelLoadError(f"{p} is a directory, not an ONNX model file{hint}")
    if not p.is_file():
        raise ModelLoadError(f"{p} is not a regular file")
    return p


def _new_session(path: Path, so: ort.SessionOptions, requests: list[ProviderRequest]) -> ort.InferenceSession:
    """Create the session; requested plugin EPs are added through their devices, not by name."""
    asked = [_name(r) for r in requests]
    plugins = [(p, package, name) for p, package, name in _installed_plugins() if name in asked]
    if not plugins:
        return ort.InferenceSession(str(path), sess_options=so, providers=requests)
    for plugin, package, name in plugins:
        device = _plugin_device(plugin, package, name)
        if device is None:
            raise ProviderError(f"{name} is installed but found no device (is there a GPU driver?)")
        so.add_provider_for_devices([device], {})
    return ort.InferenceSession(str(path), sess_options=so)


def create_session(
    path: str | os.PathLike[str], providers: Providers, options: RuntimeOptions
) -> ort.InferenceSession:
    """Load ``path`` into an ``InferenceSession`` and check that the providers really in use fit the request.

    Raises :class:`ModelLoadError` for a file onnxruntime cannot load and :class:`ProviderError` when an
    explicitly requested provider is not in use after the session is made.
    """
    p = check_model_path(path)
    requests, auto = resolve_providers(providers)
    so = session_options(options)
    try:
        sess = _new_session(p, so, requests)
    except ProviderError:
        raise
    except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, InvalidProtobuf...)
        message = first_line(exc)
        raise ModelLoadError(f"onnxruntime cannot load {p}: {message}") from exc
    used = sess.get_providers()
    asked = [_name(r) for r in requests]
    if auto:
        if options.log_provider_choice:
            logger.info("providers='auto' chose %s for %s", ", ".join(used), p.name)
            if used[0] != asked[0]:
                logger.warning(
                    "providers='auto' asked for %s but onnxruntime fell back to %s", asked[0], used
                )
    else:
        missing = [name for name in asked if name not in used]
        if missing:
            raise ProviderError(
                f"requested providers {asked} but onnxruntime is using {used} for {p.name} "
                f"({', '.join(missing)} could not be initialised); available: {available_providers()}"
            )
    return sess
