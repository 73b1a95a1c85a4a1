"""The runtime's settings (:class:`RuntimeOptions`) and the onnxruntime ``SessionOptions`` made from them."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from .errors import ConfigurationError

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class RuntimeOptions:
    """Explicit settings of a :class:`~embed_runtime.Runtime`, like onnxruntime's ``SessionOptions``.

    Attributes:
        intra_op_threads: threads of one operator (``None``: onnxruntime's default, one per physical core).
        inter_op_threads: threads across operators (``None``: onnxruntime's default).
        allow_spinning: let idle pool threads spin; off by default, it burns CPU between requests and the
            measured gain on small lookups is nil.
        io_binding: reuse bound input/output buffers for repeated shapes (the small-call fast path).
        io_binding_max_bytes: largest size, in bytes, of one buffer set (outputs and the bound copies of
            the inputs) that the fast path keeps for a shape.
        io_binding_cache: how many distinct input shapes each thread keeps bound buffers for.
        log_provider_choice: log what ``providers="auto"`` chose (INFO) and any fall-back (WARNING).
        log_severity_level: onnxruntime's own log level (0 verbose ... 4 fatal).
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        lookup_fast_path: answer the outputs the exporter proved to be pure lookups (and their masks) from
            the tables read out of the model at load, with numpy (:mod:`embed_runtime.lookup`).
        lookup_max_bytes: largest total size, in bytes, of those tables (in the outputs' dtype); a model
            with bigger tables stays on onnxruntime.

    Raises :class:`~embed_runtime.errors.ConfigurationError` for a value outside those.
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
    lookup_fast_path: bool = True
    lookup_max_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        limits = (
            ("intra_op_threads", self.intra_op_threads, 0, True),
            ("inter_op_threads", self.inter_op_threads, 0, True),
            ("io_binding_max_bytes", self.io_binding_max_bytes, 0, False),
            ("io_binding_cache", self.io_binding_cache, 1, False),
            ("log_severity_level", self.log_severity_level, 0, False),
            ("lookup_max_bytes", self.lookup_max_bytes, 0, False),
        )
        for name, value, low, optional in limits:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                allowed = f"an integer >= {low}" + (" or None" if optional else "")
                raise ConfigurationError(f"RuntimeOptions.{name} must be {allowed}, got {value!r}")
        if self.graph_optimization_level not in _OPT_LEVELS:
            raise ConfigurationError(
                f"RuntimeOptions.graph_optimization_level must be one of {', '.join(_OPT_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """onnxruntime ``SessionOptions`` for ``options`` (already checked by :class:`RuntimeOptions`)."""
    so = ort.SessionOptions()
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = options.inter_op_threads
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = options.log_severity_level
    so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization_level]
    return so


QUIET_RUN = ort.RunOptions()
"""``RunOptions`` that keep onnxruntime from logging a failed run's error to stderr, for the runs whose
failure the runtime turns into its own clear error (inputs with no ids); other runs log as configured."""
QUIET_RUN.log_severity_level = 4
