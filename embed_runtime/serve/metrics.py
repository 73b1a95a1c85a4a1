"""Prometheus metrics of the server, kept in a registry of their own (one per app).

With ``--workers N`` (:mod:`~embed_runtime.serve.workers`) the parent sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start, so prometheus-client keeps every value in files of that folder and any worker
answers ``/metrics`` with the sums over all workers (its multiprocess mode); the ``process_*`` metrics,
which would describe only the worker that answers, are left out then.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable naming the folder of prometheus-client's multiprocess mode."""

UNKNOWN_MODEL = "_unknown"
"""The ``model`` label of requests naming a model the server does not have (keeps label values bounded)."""


class ServeMetrics:
    """Request counts, failures and latencies per model, in-flight requests, and process metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = bool(os.environ.get(MULTIPROCESS_DIR))
        """Whether the values are those of every worker (prometheus-client's multiprocess mode)."""
        if not self.shared:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "embed_runtime_infer_requests",
            "Inference requests received, per model.",
            ["model"],
            registry=self.registry,
        )
        self.failures = Counter(
            "embed_runtime_infer_failures",
            "Inference requests answered with an error, per model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "embed_runtime_infer_request_duration_seconds",
            "Time from an inference request's arrival to its response: reading, waiting, decoding, "
            "running and encoding.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "embed_runtime_inference_duration_seconds",
            "Time spent in the runtime's run() per successful request.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "embed_runtime_infer_in_flight",
            "Inference requests being processed or waiting for a slot.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )

    def observe(self, model: str, status: int, seconds: float) -> None:
        """Record one finished inference request."""
        self.requests.labels(model).inc()
        self.request_seconds.labels(model).observe(seconds)
        if status >= 400:
            self.failures.labels(model, str(status)).inc()

    def render(self) -> bytes:
        """The metrics in Prometheus' text exposition format (of every worker, when shared)."""
        if not self.shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """Drop this process's in-flight gauge from the shared values (a worker that stops)."""
        if self.shared:
            forget_process(os.getpid())


def forget_process(pid: int) -> None:
    """Drop the in-flight gauge of worker ``pid`` (stopped, or dead: a worker killed mid-request never
    lowered it) from the shared values, when there are any (``--workers N``)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)
