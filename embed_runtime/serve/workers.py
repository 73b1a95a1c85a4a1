"""``--workers N``: N server processes sharing the REST port and the gRPC port.

The parent binds the REST socket once and hands it to N worker processes through uvicorn's own
multi-process supervisor (:class:`uvicorn.supervisors.Multiprocess`: ``spawn``ed workers, a worker that
dies is replaced, SIGTERM/SIGINT to the parent is passed on to every worker, which stops as a single
server does: in-flight requests finish within ``--graceful-timeout``). Each worker loads the models
itself (nothing is shared through ``fork``: onnxruntime sessions and threads do not survive it), warms
them up and serves gRPC on the same ``--grpc-port`` with ``SO_REUSEPORT`` (grpcio's ``grpc.so_reuseport``):
the kernel spreads connections over the workers' listeners. ``/metrics`` sums over the workers
(prometheus-client's multiprocess mode, :mod:`~embed_runtime.serve.metrics`).

Readiness stays truthful whichever worker answers a probe: a :class:`WorkerBoard` in shared memory holds
the pid of each worker that has warmed up, and a worker answers ready only when every one of the N slots
holds a live worker (reads only: no lock is taken by a probe).

A model's table in ONNX external data is memory-mapped by onnxruntime, so its pages are the page cache's
and the N workers share them; tables inside the ``.onnx`` are copied by each worker
(``docs/serve.md``, "Workers").
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import socket
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from embed_runtime import ConfigurationError
from embed_runtime.cli_common import one_line
from embed_runtime.serve.metrics import MULTIPROCESS_DIR, forget_process

if TYPE_CHECKING:
    from starlette.applications import Starlette

logger = logging.getLogger(__name__)

WORKERS_PER_CPU = 4
"""Most workers per usable CPU (each loads every model, so more only costs memory)."""


def usable_cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def check_workers(workers: int, repository: bool) -> None:
    """Refuse a ``--workers`` value that is not a positive number at most :data:`WORKERS_PER_CPU` per CPU,
    or several workers with a model repository (a load or unload would reach one worker only)."""
    most = WORKERS_PER_CPU * usable_cpus()
    if workers < 1 or workers > most:
        raise ConfigurationError(
            f"--workers {workers} is out of range: give 1 to {most} ({WORKERS_PER_CPU} per usable CPU, "
            f"{usable_cpus()} here; each worker loads every model)"
        )
    if workers > 1 and repository:
        raise ConfigurationError(
            f"--workers {workers} cannot be used with --model-repository: a load or unload request reaches "
            "one worker only; run one worker per server with a model repository"
        )


def tcp_socket(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``SO_REUSEADDR``, as uvicorn binds its own), or a
    :class:`~embed_runtime.ConfigurationError` when the port is taken.

    Made with ``IPPROTO_TCP`` rather than uvicorn's ``Config.bind_socket`` (protocol 0): asyncio turns
    Nagle's algorithm off (``TCP_NODELAY``) only on connections of a socket whose ``proto`` says TCP, and
    without it every keep-alive response waited ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot serve {what} on {host}:{port}: {exc.strerror}") from None
    return sock


class WorkerBoard:
    """The pids of the workers that have warmed up, one slot per worker, in memory shared by them all."""

    def __init__(self, workers: int) -> None:
        self._pids = multiprocessing.get_context("spawn").Array("q", workers)
        self._stopped = False
        """Set (in this process) by ``mark(False)``: a warm-up that ends after it marks nothing."""

    def mark(self, ready: bool) -> None:
        """Record this worker as warm (in a free slot, or that of a worker that died, whose in-flight
        requests are dropped from ``/metrics`` then) or, when ``ready`` is false, as no longer serving, for
        good: a later ``mark(True)`` (the warm-up thread of a worker that is stopping) changes nothing."""
        pid = os.getpid()
        with self._pids.get_lock():
            slots = self._pids.get_obj()
            held = [int(slot) for slot in slots]
            if not ready:
                self._stopped = True
                if pid in held:
                    slots[held.index(pid)] = 0
            elif pid not in held and not self._stopped:
                free = [index for index, other in enumerate(held) if not _alive(other)]
                if free:
                    if held[free[0]]:  # a worker that died: its replacement takes its slot
                        forget_process(held[free[0]])
                    slots[free[0]] = pid

    def all_ready(self) -> bool:
        """Whether every slot holds a live warm worker (no lock: a read of N integers and N ``kill 0``)."""
        return all(_alive(int(pid)) for pid in self._pids.get_obj())


def _alive(pid: int) -> bool:
    """Whether ``pid`` (0: none) is a running process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists (another user's)
    return True


def worker_app(args: argparse.Namespace, board: WorkerBoard) -> Starlette:
    """The app of one worker (uvicorn's app factory, called in the worker): load and serve the models.

    An error that would stop a single server at start (a model that does not load) is printed as one line
    and ends the worker with uvicorn's startup-failure status, which stops the parent rather than having it
    start the worker again.
    """
    from uvicorn.config import STARTUP_FAILURE

    from embed_runtime.errors import EmbedRuntimeError
    from embed_runtime.serve import build_app

    try:
        return build_app(args, board)
    except EmbedRuntimeError as exc:
        print(f"embed-runtime serve: error: worker {os.getpid()}: {one_line(exc)}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


def serve_workers(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Serve with ``args.workers`` processes until SIGINT/SIGTERM; the exit status (1 when a worker
    failed to start). ``options`` are the :class:`uvicorn.Config` options of a single server."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if args.grpc_port is not None:  # the workers bind it with SO_REUSEPORT: check nothing else holds it
        tcp_socket(args.host, args.grpc_port, "gRPC").close()
    sock = tcp_socket(args.host, args.port, "HTTP")
    sock.set_inheritable(True)
    config = uvicorn.Config(
        functools.partial(worker_app, args, WorkerBoard(args.workers)),
        factory=True,
        workers=args.workers,
        **options,
    )
    logger.info("serving on http://%s:%d with %d workers", args.host, args.port, args.workers)
    with tempfile.TemporaryDirectory(prefix="embed-runtime-metrics-") as shared:
        os.environ[MULTIPROCESS_DIR] = shared  # the workers' /metrics sum over them all
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    sock.close()
    return 1 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
