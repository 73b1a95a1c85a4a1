"""Model naming, the serve options and start-up errors, and the served version, without a live server."""

from __future__ import annotations

import argparse
import json
import re
import runpy
import sys
from pathlib import Path

import anyio
import pytest
from starlette.types import ASGIApp, Message

import embed_runtime
from embed_runtime import ConfigurationError, cli
from embed_runtime.serve import Limits, add_arguments, create_app, limits_from_args, model_specs


def test_names_from_paths() -> None:
    specs = model_specs(
        ["a/words.onnx", "models/recommender/model.onnx", "repo/ranker/1/model.onnx", "x=a/y.onnx"]
    )
    assert specs == {
        "words": Path("a/words.onnx"),
        "recommender": Path("models/recommender/model.onnx"),
        "ranker": Path("repo/ranker/1/model.onnx"),
        "x": Path("a/y.onnx"),
    }


@pytest.mark.parametrize(
    ("specs", "text"),
    [
        (["models/a/model.onnx", "other/a/model.onnx"], "two models are named 'a'"),
        (["a.onnx", "a=b.onnx"], "two models are named 'a'"),
        (["bad name=a.onnx"], "model name 'bad name'"),
        (["=a.onnx"], "model name ''"),
    ],
)
def test_bad_names(specs: list[str], text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        model_specs(specs)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = _parse(["m.onnx"])
    assert (args.host, args.port, args.max_concurrency, args.max_body_mb) == ("127.0.0.1", 8000, 4, 64.0)
    assert not args.no_access_log
    assert limits_from_args(args) == (Limits(max_batch=4096, max_ids=2**20, max_output_bytes=64 * 2**20), {})


def test_limits_for_every_model_and_per_model() -> None:
    args = _parse(
        [
            "m.onnx",
            "--max-batch",
            "8",
            "--max-batch",
            "seed=2",
            "--max-ids",
            "seed=100",
            "--max-output-mb",
            "0.5",
        ]
    )
    every = Limits(max_batch=8, max_ids=2**20, max_output_bytes=2**19)
    assert limits_from_args(args) == (
        every,
        {"seed": Limits(max_batch=2, max_ids=100, max_output_bytes=2**19)},
    )


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--max-batch", "seed=1", "--max-batch", "seed=2"], "--max-batch is given twice for model 'seed'"),
        (["--max-ids", "5", "--max-ids", "6"], "--max-ids is given twice for every model"),
        (["--max-output-mb", "2000000"], "Limits.max_output_bytes must be an integer from 1 to 2**40"),
    ],
)
def test_bad_limits_are_refused(argv: list[str], text: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(text)):
        limits_from_args(_parse(["m.onnx", *argv]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-concurrency", "0"],
        ["--max-body-mb", "-1"],
        ["--threads", "x"],
        ["--threads", "-1"],
        ["--port", "x"],
        ["--max-batch", "0"],
        ["--max-batch", "seed=x"],
        ["--max-ids", "1.5"],
        ["--max-output-mb", "-2"],
    ],
)
def test_bad_numbers_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["m.onnx", *argv])
    assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["absent.onnx"], "model file not found: absent.onnx"),
        (["a/m.onnx", "b/m.onnx"], "two models are named 'm'"),
    ],
)
def test_start_up_errors_are_one_line(
    models: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like ``run``, ``info`` and ``bench``: ``embed-runtime serve: error: ...`` and exit status 1."""
    assert cli.main(["serve", *models]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embed-runtime serve: error: ") and message in err and err.count("\n") == 1


def test_module_entry_point_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m embed_runtime.serve`` takes the same error path."""
    monkeypatch.setattr(sys, "argv", ["embed_runtime.serve", str(tmp_path / "absent.onnx")])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("embed_runtime.serve", run_name="__main__")
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("embed-runtime serve: error: model file not found")


async def _get(app: ASGIApp, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI interface, as a server would make it."""
    return await _asgi(app, "GET", path)


async def _asgi(app: ASGIApp, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through the ASGI interface, as a server would make it: its status and body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_served_version_is_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """``/v2`` reports ``embed_runtime.__version__``, the one version source (not the installed
    distribution's metadata, which can be stale or absent)."""
    monkeypatch.setattr(embed_runtime, "__version__", "9.8.7-test")
    status, body = anyio.run(_get, create_app({}), "/v2")
    assert status == 200 and json.loads(body)["version"] == "9.8.7-test"
