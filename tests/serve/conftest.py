"""Fixtures for the server tests: small ONNX models built with the onnx helper API and a real server.

The server runs as ``python -m embed_runtime.serve`` in a subprocess on a free loopback port, once per
test session; tests talk to it over HTTP only.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from embed_runtime.contract import EmbeddingInfo, ModelMetadata

from .helpers import REPO_MODELS, SERVE_MODULE, RawHttp, start_server, stop_server

if not all(
    importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "prometheus_client", "tritonclient")
):
    collect_ignore_glob = ["test_*.py"]  # the serve extra or tritonclient is not installed

MAX_BODY_MB = 1


def _table(name: str, rows: int, cols: int, seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return numpy_helper.from_array(values, name)


def save_model(path: Path, graph: onnx.GraphProto, embeddings: tuple[EmbeddingInfo, ...]) -> Path:
    """Save ``graph`` as a checked model with the contract's metadata (checked by path, so that external
    data is found beside it)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, ModelMetadata(embeddings=embeddings).to_props())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    onnx.checker.check_model(str(path))
    return path


def _mask_nodes(ids: str, mask: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Equal", [ids, "zero"], [f"{mask}_eq"]),
        helper.make_node("Not", [f"{mask}_eq"], [mask]),
    ]


def _zero() -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")


def build_words(path: Path) -> Path:
    """One input ``input_ids`` (batch, seq), a 50x8 table, outputs ``embedding`` and bool ``mask``."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["embedding"]),
            *_mask_nodes("input_ids", "mask"),
        ],
        "words",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "seq", 8]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
        ],
        initializer=[_table("table", 50, 8, 0), _zero()],
    )
    info = EmbeddingInfo("words", ("input_ids",), 50, 8, True, 0, "mask")
    return save_model(path, graph, (info,))


def build_recommender(path: Path) -> Path:
    """Inputs ``user_ids`` (batch, 1) and ``item_ids`` (batch, seq); two masked tables, four outputs."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["user_table", "user_ids"], ["user_vec"]),
            helper.make_node("Gather", ["item_table", "item_ids"], ["item_vec"]),
            *_mask_nodes("user_ids", "user_emb_mask"),
            *_mask_nodes("item_ids", "item_emb_mask"),
        ],
        "recommender",
        [
            helper.make_tensor_value_info("user_ids", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info("user_vec", TensorProto.FLOAT, ["batch", 1, 4]),
            helper.make_tensor_value_info("item_vec", TensorProto.FLOAT, ["batch", "seq", 6]),
            helper.make_tensor_value_info("user_emb_mask", TensorProto.BOOL, ["batch", 1]),
            helper.make_tensor_value_info("item_emb_mask", TensorProto.BOOL, ["batch", "seq"]),
        ],
        initializer=[_table("user_table", 30, 4, 1), _table("item_table", 40, 6, 2), _zero()],
    )
    infos = (
        EmbeddingInfo("user_emb", ("user_ids",), 30, 4, True, 0, "user_emb_mask"),
        EmbeddingInfo("item_emb", ("item_ids",), 40, 6, True, 0, "item_emb_mask"),
    )
    return save_model(path, graph, infos)


def build_fragile(path: Path) -> Path:
    """Valid ids, but ``pairs`` reshapes the embeddings to (-1, 4): onnxruntime fails on an odd id count."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["embedding"]),
            helper.make_node("Reshape", ["embedding", "pair_shape"], ["pairs"]),
        ],
        "fragile",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "seq", 2]),
            helper.make_tensor_value_info("pairs", TensorProto.FLOAT, [None, 4]),
        ],
        initializer=[_table("table", 10, 2, 3), numpy_helper.from_array(np.array([-1, 4]), "pair_shape")],
    )
    info = EmbeddingInfo("fragile", ("input_ids",), 10, 2, False, None, None)
    return save_model(path, graph, (info,))


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Served name to model file: ``words`` (as words/model.onnx), ``recommender`` and ``fragile``."""
    root = tmp_path_factory.mktemp("models")
    return {
        "words": build_words(root / "words" / "model.onnx"),
        "recommender": build_recommender(root / "recommender.onnx"),
        "fragile": build_fragile(root / "fragile.onnx"),
    }


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """Start a server of the test's own (log in ``tmp_path/server.log``); stopped after the test."""
    procs: list[subprocess.Popen] = []

    def _launch(args: list[str], command: tuple[str, ...] = SERVE_MODULE) -> tuple[subprocess.Popen, str]:
        proc, url = start_server(args, tmp_path / "server.log", command)
        procs.append(proc)
        return proc, url

    yield _launch
    for proc in procs:
        if proc.poll() is None:
            stop_server(proc)


@pytest.fixture(scope="session")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared server's stdout and stderr."""
    return tmp_path_factory.mktemp("server") / "server.log"


@pytest.fixture(scope="session")
def server(model_paths: dict[str, Path], server_log: Path) -> Iterator[str]:
    """``host:port`` of a server with the three models, a 1 MiB body limit and 2 concurrent requests."""
    args = [
        str(model_paths["words"]),
        f"recommender={model_paths['recommender']}",
        str(model_paths["fragile"]),
        "--max-body-mb",
        str(MAX_BODY_MB),
        "--max-concurrency",
        "2",
        "--providers",
        "cpu",
    ]
    proc, url = start_server(args, server_log)
    yield url
    stop_server(proc)


@pytest.fixture(scope="session")
def repo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawHttp]:
    """A server of the committed seed, classifier, recurrent and tagger models, with default limits."""
    models = [
        str(REPO_MODELS / name / "model.onnx") for name in ("seed", "classifier", "recurrent", "tagger")
    ]
    proc, url = start_server([*models, "--providers", "cpu"], tmp_path_factory.mktemp("repo") / "server.log")
    yield RawHttp(url)
    stop_server(proc)


@pytest.fixture(scope="session")
def body_limit() -> int:
    """The shared server's request body limit in bytes."""
    return MAX_BODY_MB * 2**20


@pytest.fixture
def http(server: str) -> RawHttp:
    """A raw HTTP client on the shared server."""
    return RawHttp(server)
