"""The Ray Data path (``embed_runtime.scale``): one local Ray for the whole session, loopback only.

TensorFlow-free: the committed models, and ``gather_model`` from ``benchmarks/ray_batch.py`` (an
external-data model built with the onnx helper API). Where the ``[ray]`` extra is not installed, the
test modules here are not collected (they could not even be imported).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

# read by Ray when it is imported (the test modules import it after this file): no usage reporting, and a
# one-machine Ray that listens on 127.0.0.1 only
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})

if any(importlib.util.find_spec(m) is None for m in ("ray", "pyarrow", "pandas")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray of 3 logical CPUs (2 actors + 1 for read tasks), quiet, rows kept in order; yields its
    GCS address and shuts it down at the end of the session."""
    from .helpers import ray

    context = ray.init(
        num_cpus=3, include_dashboard=False, logging_level="warning", object_store_memory=256 << 20
    )
    assert context.address_info["node_ip_address"] == "127.0.0.1", "Ray must listen on loopback only"
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False
    data.execution_options.preserve_order = True
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
