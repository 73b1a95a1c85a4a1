"""Everything that touches ``onnxruntime.InferenceSession``: options, execution providers, dtypes, and the
reusable IO-binding buffers of the small-call fast path (:class:`BoundShape`).

Provider resolution follows onnxruntime's own conventions but checks the result: onnxruntime only warns
when a requested provider is missing and silently falls back to the CPU, so :func:`create_session`
compares what was asked with :meth:`onnxruntime.InferenceSession.get_providers` afterwards.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from sys import getrefcount
from typing import Any, TypeAlias

import numpy as np
import onnxruntime as ort

from .errors import InvalidInputError, ModelLoadError, ProviderError
from .inputs import max_reduce

logger = logging.getLogger("embed_runtime")

CPU = "CPUExecutionProvider"
WEBGPU_PLUGIN_MODULE = "onnxruntime_ep_webgpu"
WEBGPU_REGISTRATION_NAME = "webgpu"

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
``WebGpuExecutionProvider`` stands for the WebGPU plugin EP (its real name comes from the plugin)."""

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

ORT_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}
"""onnxruntime's type strings (``NodeArg.type``) to numpy dtypes; anything else maps to ``object``."""

MAX_BUFFER_SETS = 3
"""Buffer sets per input shape: enough for a caller that keeps the previous result while asking the next."""
SMALL_BATCH_IDS = 64
"""Up to this many ids, the hot path checks them with Python's ``max`` (cheaper than a ufunc call)."""

Shape = tuple[int, ...]
_Layout = tuple[tuple[tuple[str, Shape, np.dtype[Any]], ...], ...]

ProviderSpec: TypeAlias = "str | tuple[str, dict[str, Any]]"
Providers: TypeAlias = "str | Sequence[ProviderSpec]"


def numpy_dtype(ort_type: str) -> np.dtype[Any]:
    """The numpy dtype of an onnxruntime type string such as ``tensor(int64)`` (``object`` if unknown)."""
    return ORT_TO_NUMPY.get(ort_type, np.dtype(object))


@dataclass(frozen=True)
class RuntimeOptions:
    """Explicit settings of a :class:`~embed_runtime.Runtime`, like onnxruntime's ``SessionOptions``.

    Attributes:
        intra_op_threads: threads of one operator (``None``: onnxruntime's default, one per physical core).
        inter_op_threads: threads across operators (``None``: onnxruntime's default).
        allow_spinning: let idle pool threads spin; off by default, it burns CPU between requests and the
            measured gain on small lookups is nil.
        io_binding: reuse bound input/output buffers for repeated shapes (the small-call fast path).
        io_binding_max_bytes: largest total output size, in bytes, that the fast path caches buffers for.
        io_binding_cache: how many distinct input shapes each thread keeps bound buffers for.
        log_provider_choice: log what ``providers="auto"`` chose (INFO) and any fall-back (WARNING).
        log_severity_level: onnxruntime's own log level (0 verbose ... 4 fatal).
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    allow_spinning: bool = False
    io_binding: bool = True
    io_binding_max_bytes: int = 1 << 20
    io_binding_cache: int = 8
    log_provider_choice: bool = True
    log_severity_level: int = 3
    graph_optimization_level: str = "all"

    def __post_init__(self) -> None:
        limits = (
            ("intra_op_threads", self.intra_op_threads, 0, True),
            ("inter_op_threads", self.inter_op_threads, 0, True),
            ("io_binding_max_bytes", self.io_binding_max_bytes, 0, False),
            ("io_binding_cache", self.io_binding_cache, 1, False),
            ("log_severity_level", self.log_severity_level, 0, False),
        )
        for name, value, low, optional in limits:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                allowed = f"an integer >= {low}" + (" or None" if optional else "")
                raise InvalidInputError(f"RuntimeOptions.{name} must be {allowed}, got {value!r}")
        if self.graph_optimization_level not in _OPT_LEVELS:
            raise InvalidInputError(
                f"RuntimeOptions.graph_optimization_level must be one of {', '.join(_OPT_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_plugin_lock = threading.Lock()
_plugin_registered = False


def _webgpu_plugin() -> Any | None:
    """The ``onnxruntime_ep_webgpu`` module when it is installed, else ``None``."""
    try:
        return importlib.import_module(WEBGPU_PLUGIN_MODULE)
    except ImportError:
        return None


def _webgpu_device(plugin: Any) -> Any | None:
    """Register the WebGPU plugin library once and return its first ``OrtEpDevice``, if any."""
    global _plugin_registered
    with _plugin_lock:
        if not _plugin_registered:
            try:
                ort.register_execution_provider_library(WEBGPU_REGISTRATION_NAME, plugin.get_library_path())
            except Exception as exc:  # onnxruntime raises plain RuntimeError/Fail types here
                logger.warning("could not register the WebGPU plugin execution provider: %s", exc)
                return None
            _plugin_registered = True
    name = plugin.get_ep_name()
    return next((d for d in ort.get_ep_devices() if d.ep_name == name), None)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime can use, with the WebGPU plugin EP's name when installed."""
    names = list(ort.get_available_providers())
    plugin = _webgpu_plugin()
    if plugin is not None:
        name = plugin.get_ep_name()
        if name not in names:
            names.insert(0, name)
    return names


def canonical_name(name: str) -> str:
    """The onnxruntime name of a provider given by full name or short alias (``"cuda"``)."""
    full = ALIASES.get(name.lower(), name)
    if full == "WebGpuExecutionProvider":
        plugin = _webgpu_plugin()
        if plugin is not None:
            return str(plugin.get_ep_name())
    return full


def resolve_providers(providers: Providers) -> tuple[list[ProviderSpec], bool]:
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
    specs: Sequence[ProviderSpec] = [providers] if isinstance(providers, str) else providers
    resolved: list[ProviderSpec] = []
    for spec in specs:
        name, opts = (spec, None) if isinstance(spec, str) else spec
        name = canonical_name(name)
        if name not in available:
            raise ProviderError(
                f"execution provider {name!r} was requested but is not available in this onnxruntime "
                f"{ort.__version__}; available: {', '.join(available)}"
            )
        resolved.append(name if opts is None else (name, dict(opts)))
    if not resolved:
        raise ProviderError("the providers list is empty; pass 'auto' or at least one provider name")
    return resolved, False


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """onnxruntime ``SessionOptions`` for ``options``."""
    so = ort.SessionOptions()
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = int(options.intra_op_threads)
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = int(options.inter_op_threads)
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = int(options.log_severity_level)
    try:
        so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization_level]
    except KeyError:
        raise ValueError(
            f"graph_optimization_level must be one of {', '.join(_OPT_LEVELS)}, "
            f"not {options.graph_optimization_level!r}"
        ) from None
    return so


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


def _name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def _new_session(path: Path, so: ort.SessionOptions, specs: list[ProviderSpec]) -> ort.InferenceSession:
    """Create the session; the WebGPU plugin EP is added through its device, not by name."""
    plugin = _webgpu_plugin()
    plugin_name = plugin.get_ep_name() if plugin is not None else None
    if plugin_name is not None and plugin_name in [_name(s) for s in specs]:
        device = _webgpu_device(plugin)
        if device is None:
            raise ProviderError(f"{plugin_name} is installed but found no device (is there a GPU driver?)")
        so.add_provider_for_devices([device], {})
        return ort.InferenceSession(str(path), sess_options=so)
    return ort.InferenceSession(str(path), sess_options=so, providers=specs)


def create_session(
    path: str | os.PathLike[str], providers: Providers, options: RuntimeOptions
) -> ort.InferenceSession:
    """Load ``path`` into an ``InferenceSession`` and check that the providers really in use fit the request.

    Raises :class:`ModelLoadError` for a file onnxruntime cannot load and :class:`ProviderError` when an
    explicitly requested provider is not in use after the session is made.
    """
    p = check_model_path(path)
    specs, auto = resolve_providers(providers)
    so = session_options(options)
    try:
        sess = _new_session(p, so, specs)
    except ProviderError:
        raise
    except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, InvalidProtobuf...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot load {p}: {message}") from exc
    used = sess.get_providers()
    asked = [_name(s) for s in specs]
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


class _BufferSet:
    """One ``IOBinding`` with its own input and output buffers, bound once."""

    __slots__ = ("binding", "first_input", "first_unsigned", "idle_refs", "inputs", "outputs", "run_bound")

    def __init__(self, sess: ort.InferenceSession, layout: _Layout):
        self.binding = sess.io_binding()
        self.inputs = {name: np.empty(shape, dtype) for name, shape, dtype in layout[0]}
        self.outputs = {name: np.empty(shape, dtype) for name, shape, dtype in layout[1]}
        for name, buf in self.inputs.items():
            self.binding.bind_cpu_input(name, buf)
        # The first input buffer, and a flat unsigned view of it made once: ids copied in are checked
        # there with one max (negative ids viewed as unsigned are huge).
        self.first_input = next(iter(self.inputs.values()))
        kind, size = self.first_input.dtype.kind, self.first_input.dtype.itemsize
        self.first_unsigned = self.first_input.reshape(-1).view(f"u{size}") if kind in "iu" else None
        for name, buf in self.outputs.items():
            self.binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        # The public wrapper adds WebGPU graph-capture bookkeeping (a few microseconds per call) that this
        # binding never uses; call the pybind method under it when this onnxruntime has one.
        inner_sess, inner_binding = getattr(sess, "_sess", None), getattr(self.binding, "_iobinding", None)
        if inner_sess is not None and inner_binding is not None and not _captures(sess):
            self.run_bound = partial(inner_sess.run_with_iobinding, inner_binding, None)
        else:
            self.run_bound = partial(sess.run_with_iobinding, self.binding)
        self.idle_refs: list[int] = []  # set by BoundShape once this frame's locals are gone

    def refs(self) -> list[int]:
        """Reference counts of the output buffers; above :attr:`idle_refs` while a caller holds one (or a
        view of one: a view references its base array)."""
        return [getrefcount(buf) for buf in self.outputs.values()]


class BoundShape:
    """The buffer sets of one input shape. Results are the bound output arrays themselves (no copy); a set
    is only run again once the caller has dropped every reference to its previous results, so nobody ever
    sees an array change under them. A loop ``out = rt.run(ids)`` alternates between two sets."""

    __slots__ = ("layout", "sess", "sets")

    def __init__(
        self, sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]
    ):
        self.sess = sess
        self.layout: _Layout = (
            tuple((name, a.shape, a.dtype) for name, a in feeds.items()),
            tuple((name, a.shape, a.dtype) for name, a in like.items()),
        )
        self.sets: list[_BufferSet] = []

    def _free_set(self) -> _BufferSet | None:
        """A buffer set no caller holds results of, made if needed; ``None`` when all are held."""
        for buffers in self.sets:
            if buffers.refs() == buffers.idle_refs:
                return buffers
        if len(self.sets) >= MAX_BUFFER_SETS:
            return None
        buffers = _BufferSet(self.sess, self.layout)
        buffers.idle_refs = buffers.refs()
        self.sets.append(buffers)
        return buffers

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The outputs, or ``None`` when every set is still held and no new one may be made."""
        buffers = self._free_set()
        if buffers is None:
            return None
        inputs = buffers.inputs
        for name, a in feeds.items():
            inputs[name][...] = a
        buffers.run_bound()
        return buffers.outputs.copy()

    def run_unchecked_ids(self, ids: np.ndarray, limit: int | None) -> dict[str, np.ndarray] | None:
        """The 1-input hot path: copy ``ids`` (already of the bound shape and dtype) into a free set, check
        them there against ``limit`` (``None``: nothing to check), run. ``None`` when an id is out of
        range or every set is held: the caller then takes the path that raises or runs plainly."""
        buffers = self._free_set()
        if buffers is None:
            return None
        buffers.first_input[...] = ids
        if limit is not None:
            flat = buffers.first_unsigned
            # a Python max over a few ids beats a ufunc reduction's fixed cost; big batches reduce
            top = max(flat.tolist()) if flat.size <= SMALL_BATCH_IDS else int(max_reduce(flat, None))
            if top > limit:
                return None
        buffers.run_bound()
        return buffers.outputs.copy()


def _captures(sess: ort.InferenceSession) -> bool:
    """Whether the session captures GPU graphs (then only the public IOBinding path is correct)."""
    check = getattr(getattr(sess, "_sess", None), "is_webgpu_graph_capture_enabled", None)
    return bool(check()) if check is not None else False
