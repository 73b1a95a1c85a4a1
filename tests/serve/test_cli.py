"""Model naming and the serve options, without starting a server."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from embed_runtime.serve import add_arguments, main, model_specs


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
    with pytest.raises(ValueError, match=text):
        model_specs(specs)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = _parse(["m.onnx"])
    assert (args.host, args.port, args.max_concurrency, args.max_body_mb) == ("127.0.0.1", 8000, 4, 64.0)
    assert not args.no_access_log


@pytest.mark.parametrize(
    "argv", [["--max-concurrency", "0"], ["--max-body-mb", "-1"], ["--threads", "x"], ["--port", "x"]]
)
def test_bad_numbers_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["m.onnx", *argv])
    assert argv[0] in capsys.readouterr().err


def test_main_reports_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_parse([str(tmp_path / "absent.onnx")])) == 2
    assert "absent.onnx" in capsys.readouterr().err


def test_main_reports_duplicate_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_parse(["a/m.onnx", "b/m.onnx"])) == 2
    assert "two models are named 'm'" in capsys.readouterr().err
