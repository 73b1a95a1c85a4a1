"""``embed-runtime serve``: an Open Inference Protocol (KServe V2) HTTP server for exported models.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus-client). The runtime's CLI imports this package
only when the ``serve`` subcommand runs, and calls :func:`add_arguments` and :func:`main` through
:func:`embed_runtime.cli_common.run_command` (``--providers``/``--threads`` and the one-line error with
exit status 1 are shared with ``run``, ``info`` and ``bench``); ``python -m embed_runtime.serve`` does
the same on its own. The package:

* here: the options, model naming (:func:`model_specs`), :func:`build_app` and :func:`main` (load, then
  run uvicorn);
* :mod:`~embed_runtime.serve.workers`: ``--workers N`` processes sharing the ports;
* :mod:`~embed_runtime.serve.app`: the Starlette app, its V2 endpoints, readiness and :class:`ServeConfig`;
* :mod:`~embed_runtime.serve.served`: one served model (checks, limits, run, warm-up) and the errors both
  protocols share;
* :mod:`~embed_runtime.serve.batcher`: dynamic batching (``--max-batch-size``, ``--max-queue-delay-us``);
* :mod:`~embed_runtime.serve.repository`: ``--model-repository`` and the models served by name and version;
* :mod:`~embed_runtime.serve.grpc`: the gRPC API (``--grpc-port``), on messages generated from
  ``proto/grpc_predict_v2.proto``;
* :mod:`~embed_runtime.serve.protocol`: reading a V2 request's header (strict JSON, shapes, datatypes);
* :mod:`~embed_runtime.serve.limits`: the per-model request :class:`Limits`, checked before the data is
  decoded or the model runs;
* :mod:`~embed_runtime.serve.codec`: decoding tensor data (JSON and binary) and encoding responses;
* :mod:`~embed_runtime.serve.compression`: gzip/deflate request bodies;
* :mod:`~embed_runtime.serve.metrics` and :mod:`~embed_runtime.serve.access_log`: Prometheus metrics and
  the one-line-per-request log.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from embed_runtime import ConfigurationError, load
from embed_runtime.cli_common import add_session_arguments
from embed_runtime.serve.app import ServeConfig, create_app
from embed_runtime.serve.batcher import AUTO, BatchSettings
from embed_runtime.serve.limits import Limits
from embed_runtime.serve.repository import ModelRepository
from embed_runtime.serve.workers import WorkerBoard, check_workers, serve_workers

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = [
    "Limits",
    "ServeConfig",
    "add_arguments",
    "batching_from_args",
    "build_app",
    "create_app",
    "limits_from_args",
    "main",
    "model_specs",
]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _default_name(path: Path) -> str:
    """``models/x.onnx`` -> ``x``; ``models/x/model.onnx`` -> ``x``; ``models/x/1/model.onnx`` -> ``x``."""
    if path.stem != "model":
        return path.stem
    parent = path.resolve().parent
    if parent.name.isdigit():
        parent = parent.parent
    return parent.name


def model_specs(specs: list[str]) -> dict[str, Path]:
    """Model name to path from ``PATH`` or ``NAME=PATH`` arguments.

    A bare path is named after its file stem, or after its folder when the file is ``model.onnx``
    (Triton's ``<name>/model.onnx`` and ``<name>/<version>/model.onnx`` layouts). Raises
    :class:`~embed_runtime.ConfigurationError` (a ``ValueError``) on an invalid or duplicate name.
    """
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        if not sep:
            path = Path(spec)
            name = _default_name(path)
        else:
            path = Path(path_text)
        if not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"model name {name!r} (from {spec!r}) must be letters, digits, '_', '-' or '.'; "
                "give one with NAME=PATH"
            )
        if name in models:
            raise ConfigurationError(
                f"two models are named {name!r} ({models[name]} and {path}); name them with NAME=PATH"
            )
        models[name] = path
    return models


_KINDS = {int: "a whole number", float: "a number"}


def _number(
    kind: type[int] | type[float], least: float | None = None, most: float | None = None
) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting numbers above zero, or ``least`` and above when given, up to ``most``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_KINDS[kind]}") from None
        if value <= 0 if least is None else value < least:
            wanted = "above zero" if least is None else f"{least:g} or more"
            raise argparse.ArgumentTypeError(f"{text} is not {wanted}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is over {most:,}")
        return value

    return parse


def _per_model(
    kind: type[int] | type[float], least: float | None = None, most: float | None = None
) -> Callable[[str], tuple[str | None, int | float]]:
    """An argparse ``type`` for ``N`` (every model) or ``NAME=N`` (one model): N above zero, or ``least``
    and above when given, up to ``most``."""
    number = _number(kind, least, most)

    def parse(text: str) -> tuple[str | None, int | float]:
        name, sep, value = text.rpartition("=")
        return (name if sep else None), number(value)

    return parse


def _batch_size(text: str) -> tuple[str | None, int | str]:
    """The argparse ``type`` of ``--max-batch-size``: ``[NAME=]N`` (N of 2 or more), ``auto`` or ``off``."""
    name, sep, value = text.rpartition("=")
    if value in ("auto", "off"):
        return (name if sep else None), value
    try:
        return (name if sep else None), int(_number(int, 2)(value))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}: --max-batch-size takes a number of rows (one row never batches), auto or off, for "
            "every model or as NAME=..."
        ) from None


T = TypeVar("T")

MAX_QUEUE_DELAY_US = 60_000_000
"""The longest ``--max-queue-delay-us``: a minute."""

# flag, Limits field, bytes per unit of the flag, help
_LIMIT_FLAGS = (
    ("--max-batch", "max_batch", 1, "most rows (axis 0) in each input of one request"),
    ("--max-ids", "max_ids", 1, "most ids (elements of all inputs) in one request"),
    (
        "--max-output-mb",
        "max_output_bytes",
        2**20,
        "most MiB of outputs in one response (JSON counted at its longest)",
    ),
)


def _named_values(flag: str, given: list[tuple[str | None, T]] | None) -> dict[str | None, T]:
    """``NAME`` (``None``: every model) to its value from a repeatable ``[NAME=]N`` option."""
    values: dict[str | None, T] = {}
    for name, value in given or []:
        if name in values:
            raise ConfigurationError(
                f"{flag} is given twice for {'every model' if name is None else f'model {name!r}'}"
            )
        values[name] = value
    return values


def limits_from_args(args: argparse.Namespace) -> tuple[Limits, dict[str, Limits]]:
    """The default :class:`Limits` and those of the models given with ``NAME=N``, from the limit options.

    Raises :class:`~embed_runtime.ConfigurationError` for a value given twice or out of range.
    """
    defaults: dict[str, int] = {}
    per_model: dict[str, dict[str, int]] = {}
    for flag, field_name, unit, _ in _LIMIT_FLAGS:
        for name, value in _named_values(flag, getattr(args, field_name)).items():
            (defaults if name is None else per_model.setdefault(name, {}))[field_name] = int(value * unit)
    base = Limits(**defaults)
    return base, {name: dataclasses.replace(base, **values) for name, values in per_model.items()}


def batching_from_args(
    args: argparse.Namespace,
) -> tuple[BatchSettings | None, dict[str, BatchSettings | None]]:
    """The dynamic batching of every model and of the models given with ``NAME=`` (``None``: off).

    ``--max-batch-size auto`` (the default) batches a model where its warm-up finds that batching pays
    (:data:`~embed_runtime.serve.batcher.AUTO`), ``N`` batches up to N rows, ``off`` does not batch; the
    delay applies to the models that batch. Raises :class:`~embed_runtime.ConfigurationError` for a value
    given twice, or a delay given for a model that does not batch (for every model, when none batches).
    """
    sizes = _named_values("--max-batch-size", args.max_batch_size)
    delays = _named_values("--max-queue-delay-us", args.max_queue_delay_us)
    settings: dict[str | None, BatchSettings | None] = {}
    for name in {None, *sizes, *delays}:
        size, delay = sizes.get(name, sizes.get(None, "auto")), delays.get(name, delays.get(None, 0))
        if size == "off":
            if name in delays and (name is not None or all(v == "off" for v in sizes.values())):
                which = "every model" if name is None else f"model {name!r}"
                given = f"{name}=off" if name in sizes and name is not None else "off"
                raise ConfigurationError(
                    f"--max-queue-delay-us is given for {which}, whose batching is off (--max-batch-size "
                    f"{given}); give one or the other"
                )
            settings[name] = None
        elif size == "auto":
            settings[name] = dataclasses.replace(AUTO, max_queue_delay_us=int(delay))
        else:
            settings[name] = BatchSettings(int(size), int(delay))
    default = settings.pop(None)
    return default, {name: value for name, value in settings.items() if name is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    defaults = ServeConfig()
    parser.add_argument(
        "models",
        nargs="*",
        metavar="[NAME=]PATH",
        help="ONNX model to serve; named after the file stem (or its folder for model.onnx) unless NAME= is given",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="also serve every model of DIR/<name>/<version>/model.onnx (Triton's layout), with the V2 "
        "repository extension to load and unload them while serving",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the Open Inference Protocol's gRPC API on this port of --host (default: no gRPC)",
    )
    add_session_arguments(
        parser, threads_help="onnxruntime intra-op threads per model (default: onnxruntime's)"
    )
    parser.add_argument(
        "--max-concurrency",
        type=_number(int),
        default=defaults.max_concurrency,
        help="requests decoded and run at the same time; twice as many are admitted, the others wait "
        "before their body is read (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=_number(float),
        default=defaults.max_body_bytes / 2**20,
        help="largest request body in MiB; larger ones get 413 (default: %(default)s)",
    )
    for flag, field_name, unit, what in _LIMIT_FLAGS:
        parser.add_argument(
            flag,
            dest=field_name,
            action="append",
            type=_per_model(float if unit > 1 else int),
            metavar="[NAME=]N",
            help=f"{what}: N for every model, NAME=N for one (repeatable; default: "
            f"{getattr(defaults.limits, field_name) // unit}); more get 413",
        )
    parser.add_argument(
        "--max-batch-size",
        action="append",
        type=_batch_size,
        metavar="[NAME=]N|auto|off",
        help="dynamic batching: run concurrent requests of the same shape as one inference of up to N rows "
        f"(2 or more); auto: up to {AUTO.max_batch_size} where the model's warm-up finds it saves run time, "
        "off: never; for every model, or NAME=... for one (repeatable; default: auto)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        action="append",
        type=_per_model(int, least=0, most=MAX_QUEUE_DELAY_US),
        metavar="[NAME=]N",
        help="dynamic batching: microseconds the first request of a batch waits for others; N for every "
        "model, NAME=N for one, 0 to 60,000,000 (repeatable; default: 0)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish after SIGTERM (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the REST and gRPC ports, each with its own copy of the models "
        "(tables in external data are shared) (default: %(default)s)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default: %(default)s)",
    )


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup plus a stdout handler for the ``embed_runtime`` loggers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["embed_runtime"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["embed_runtime"] = {
        "handlers": ["embed_runtime"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _host(host: str) -> str:
    """``host`` as the host part of a gRPC address (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def build_app(args: argparse.Namespace, workers: WorkerBoard | None = None) -> Starlette:
    """Load the models and build the app of the ``serve`` options ``args`` (in each worker of
    ``--workers N``, which gives its :class:`~embed_runtime.serve.workers.WorkerBoard`)."""
    limits, model_limits = limits_from_args(args)
    batching, model_batching = batching_from_args(args)
    loader = functools.partial(load, providers=args.providers, threads=args.threads)
    models = {name: loader(path) for name, path in model_specs(args.models).items()}
    config = ServeConfig(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_concurrency=args.max_concurrency,
        access_log=not args.no_access_log,
        limits=limits,
        model_limits=model_limits,
        grpc_address=None if args.grpc_port is None else f"{_host(args.host)}:{args.grpc_port}",
        graceful_timeout=args.graceful_timeout,
        batching=batching,
        model_batching=model_batching,
    )
    repository = None
    if args.model_repository is not None:
        repository = ModelRepository(args.model_repository, loader)
    return create_app(models, config, repository, workers)


def main(args: argparse.Namespace) -> int:
    """Load the models and serve them until SIGINT/SIGTERM; returns the exit status.

    Raises :class:`~embed_runtime.EmbedRuntimeError` (a bad model name, limit or worker count, a model
    that does not load, a provider that is not available) before the server starts.
    """
    import uvicorn

    if not args.models and args.model_repository is None:
        raise ConfigurationError(
            "give at least one model to serve, as [NAME=]PATH or with --model-repository DIR"
        )
    check_workers(args.workers, args.model_repository is not None)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": _log_config(args.log_level),
        "log_level": args.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": args.graceful_timeout,
    }
    if args.workers > 1:
        limits_from_args(args)  # a bad option is one error here, not one per worker
        batching_from_args(args)
        model_specs(args.models)
        return serve_workers(args, options)
    uvicorn.Server(uvicorn.Config(build_app(args), **options)).run()
    return 0
