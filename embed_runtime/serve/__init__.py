"""``embed-runtime serve``: an Open Inference Protocol (KServe V2) HTTP server for exported models.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus-client). The runtime's CLI imports this package
only when the ``serve`` subcommand runs, and calls :func:`add_arguments` and :func:`main`; ``python -m
embed_runtime.serve`` does the same on its own.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Callable
from pathlib import Path

from embed_runtime.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "add_arguments", "create_app", "main", "model_specs"]

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
    (Triton's ``<name>/model.onnx`` and ``<name>/<version>/model.onnx`` layouts). Raises ``ValueError`` on
    an invalid or duplicate name.
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
            raise ValueError(
                f"model name {name!r} (from {spec!r}) must be letters, digits, '_', '-' or '.'; "
                "give one with NAME=PATH"
            )
        if name in models:
            raise ValueError(
                f"two models are named {name!r} ({models[name]} and {path}); name them with NAME=PATH"
            )
        models[name] = path
    return models


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting only numbers above zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above zero")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    defaults = ServeConfig()
    parser.add_argument(
        "models",
        nargs="+",
        metavar="[NAME=]PATH",
        help="ONNX model to serve; named after the file stem (or its folder for model.onnx) unless NAME= is given",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--providers",
        default="auto",
        help="'auto' (best available, CPU last) or a comma-separated list such as 'cuda,cpu' (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=_positive(int), default=None, help="onnxruntime intra-op threads per model"
    )
    parser.add_argument(
        "--max-concurrency",
        type=_positive(int),
        default=defaults.max_concurrency,
        help="requests decoded and run at the same time; others wait (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=_positive(float),
        default=defaults.max_body_bytes / 2**20,
        help="largest request body in MiB; larger ones get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish after SIGTERM (default: %(default)s)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default: %(default)s)",
    )


def _log_config(level: str) -> dict:
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


def main(args: argparse.Namespace) -> int:
    """Load the models and serve them until SIGINT/SIGTERM; returns the exit status."""
    import uvicorn

    import embed_runtime
    from embed_runtime.errors import EmbedRuntimeError

    try:
        paths = model_specs(args.models)
        text = args.providers.strip()
        providers = "auto" if text.lower() == "auto" else [p.strip() for p in text.split(",") if p.strip()]
        models = {
            name: embed_runtime.load(path, providers=providers, threads=args.threads)
            for name, path in paths.items()
        }
    except (ValueError, EmbedRuntimeError) as exc:
        print(f"embed-runtime serve: {exc}", file=sys.stderr)
        return 2
    config = ServeConfig(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_concurrency=args.max_concurrency,
        access_log=not args.no_access_log,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(models, config),
            host=args.host,
            port=args.port,
            log_config=_log_config(args.log_level),
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=args.graceful_timeout,
        )
    )
    server.run()
    return 0
