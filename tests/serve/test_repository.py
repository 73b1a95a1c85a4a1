"""``--model-repository``: Triton's layout, versioned paths, and the V2 repository extension (index, load,
unload) while clients keep sending requests, which never fail and always get the version they name."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import embed_runtime
from embed_runtime import cli

from .conftest import build_words
from .helpers import RawHttp

IDS = [[3, 7, 0]]


def _request() -> dict[str, Any]:
    return {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": IDS}]}


def _scaled_copy(source: Path, target: Path, factor: float) -> Path:
    """``source`` with its table multiplied by ``factor``: the same interface, other answers."""
    model = onnx.load(source)
    (table,) = [t for t in model.graph.initializer if t.name == "table"]
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table) * np.float32(factor), "table"))
    target.parent.mkdir(parents=True)
    onnx.save(model, target)
    return target


def _embedding(reply: Any) -> np.ndarray:
    (out,) = [o for o in reply.json()["outputs"] if o["name"] == "embedding"]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``words`` version 1 (version 2 is built beside it, in ``staging``, to be copied in)."""
    root = tmp_path / "repo"
    v1 = build_words(root / "words" / "1" / "model.onnx")
    _scaled_copy(v1, tmp_path / "staging" / "2" / "model.onnx", 2.0)
    (root / "empty").mkdir()  # no version folder: not a model
    return root


def test_versions_load_and_unload_under_load(launch: Any, repo: Path, model_paths: dict[str, Path]) -> None:
    _, url = launch(
        ["--model-repository", str(repo), f"rec={model_paths['recommender']}", "--providers", "cpu"]
    )
    http = RawHttp(url)
    expected = {
        v: embed_runtime.load(repo.parent / p, providers="cpu").run({"input_ids": np.array(IDS)})["embedding"]
        for v, p in (("1", "repo/words/1/model.onnx"), ("2", "staging/2/model.onnx"))
    }
    assert http.post("/v2/repository/index").json() == [{"name": "words", "version": "1", "state": "READY"}]
    assert http.get("/v2/models/words").json()["versions"] == ["1"]
    assert http.get("/v2/models/rec/ready").status_code == 200  # a model given by path is served beside...
    reply = http.post("/v2/repository/models/rec/unload")  # ... outside the repository
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("model 'rec' is served from a path given to the server")

    failures: list[str] = []
    answers: dict[str, int] = {"1": 0, "2": 0}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            reply = http.post("/v2/models/words/infer", json_body=_request())
            if reply.status_code != 200:
                failures.append(reply.text)
                continue
            version = reply.json()["model_version"]
            if not np.array_equal(_embedding(reply), expected[version]):
                failures.append(f"version {version} answered another version's embedding")
            answers[version] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        shutil.copytree(repo.parent / "staging" / "2", repo / "words" / "2")
        assert http.post("/v2/repository/models/words/load").status_code == 200
        assert http.get("/v2/models/words").json()["versions"] == ["1", "2"]
        for version in ("1", "2"):
            reply = http.post(f"/v2/models/words/versions/{version}/infer", json_body=_request())
            assert reply.json()["model_version"] == version
            np.testing.assert_array_equal(_embedding(reply), expected[version])
        shutil.rmtree(repo / "words" / "1")
        assert http.post("/v2/repository/models/words/load").status_code == 200
        reply = http.post("/v2/models/words/versions/1/infer", json_body=_request())
        assert (reply.status_code, reply.json()) == (
            404,
            {"error": "model 'words' has no version '1'; it has 2"},
        )
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
    assert not failures, failures[:3]
    assert answers["2"] > 0

    assert http.post("/v2/repository/models/words/unload").status_code == 200
    assert http.post("/v2/repository/index").json() == [
        {"name": "words", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    assert http.post("/v2/models/words/infer", json_body=_request()).status_code == 404
    assert http.get("/v2/health/ready").status_code == 200  # an unloaded model is no longer served
    assert http.post("/v2/repository/models/words/load").status_code == 200
    assert http.post("/v2/models/words/infer", json_body=_request()).json()["model_version"] == "2"


def test_repository_errors(launch: Any, repo: Path) -> None:
    _, url = launch(["--model-repository", str(repo), "--providers", "cpu"])
    http = RawHttp(url)
    reply = http.post("/v2/repository/models/nope/load")
    assert reply.status_code == 404
    assert (
        reply.json()["error"]
        == f"model repository {repo} has no model 'nope' (no {repo}/nope/<version>/model.onnx)"
    )
    reply = http.post("/v2/repository/models/nope/unload")
    assert (reply.status_code, reply.json()) == (404, {"error": "model 'nope' is not loaded"})
    assert http.get("/v2/models/words/versions/7").json() == {
        "error": "model 'words' has no version '7'; it has 1"
    }


def test_repository_endpoints_only_with_a_repository(http: RawHttp) -> None:
    assert http.post("/v2/repository/index").status_code == 404


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give at least one model to serve, as [NAME=]PATH or with --model-repository DIR"),
        (["--model-repository", "absent-dir"], "model repository absent-dir is not a directory"),
    ],
)
def test_start_up_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", *argv]) == 1
    assert capsys.readouterr().err == f"embed-runtime serve: error: {message}\n"


def test_a_name_in_the_repository_and_given_by_path_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", f"words={repo}/words/1/model.onnx", "--model-repository", str(repo)]) == 1
    assert (
        "model(s) 'words' are given as paths and are in the model repository too" in capsys.readouterr().err
    )


def test_versions_loaded_later_are_batched_like_those_at_start(repo: Path) -> None:
    """A version loaded through the repository gets the batcher its model is configured with, as the
    versions there at start-up do (it used to be served unbatched). The HTTP ``.../load`` route runs this
    same call in a worker thread (``test_versions_load_and_unload_under_load``)."""
    from embed_runtime.serve.app import ServeConfig, create_app
    from embed_runtime.serve.batcher import BatchSettings
    from embed_runtime.serve.repository import ModelRepository

    config = ServeConfig(batching=BatchSettings(max_batch_size=8, max_queue_delay_us=0))
    app = create_app(
        {}, config, ModelRepository(repo, lambda path: embed_runtime.load(path, providers="cpu"))
    )
    handlers = app.state.handlers
    assert all(model.batcher is not None for model in handlers.models.all())  # at start-up
    shutil.copytree(repo.parent / "staging" / "2", repo / "words" / "2")
    handlers.models.load("words", handlers.limits("words"), handlers.setup)
    served = handlers.models.by_name["words"]
    assert sorted(served) == ["1", "2"]
    assert all(model.batcher is not None and model.ready for model in served.values())
