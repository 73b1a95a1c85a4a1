"""The ``embed-runtime`` command line and its shared plumbing (:mod:`embed_runtime.cli_common`)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from embed_runtime import EmbedRuntimeError, cli
from embed_runtime.cli_common import parse_providers, run_command

from .conftest import Built


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("info", "run", "bench", "serve", "--ids", "[serve] extra"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--output" in capsys.readouterr().out
    assert (
        run(
            capsys,
        )[0]
        == 2
    )
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "onnxruntime" in out


def test_info(capsys: pytest.CaptureFixture[str], models: dict[str, Built]) -> None:
    code, out, _ = run(capsys, "info", str(models["single"].path), "--providers", "cpu", "--threads", "1")
    assert code == 0
    for text in (
        "providers in use: CPUExecutionProvider",
        "input_ids: int64(batch, sequence), ids in [0, 50)",
        "emb: float32(batch, sequence, 4)",
        "mask: bool(batch, sequence)",
        "embedding input_ids_embedding: 50 x 4 float32",
        "keras_version: 3.0.0",
        "onnxruntime",
    ):
        assert text in out
    code, out, _ = run(capsys, "info", str(models["foreign"].path))
    assert code == 0 and "not an embed-runtime export" in out


def test_run_inline_and_files(
    capsys: pytest.CaptureFixture[str], models: dict[str, Built], tmp_path: Path
) -> None:
    single = models["single"]
    code, out, _ = run(capsys, "run", str(single.path), "--ids", "[[4, 20, 0], [1]]")
    assert code == 0 and "mask: bool(2, 3)" in out and "[ True False False]" in out
    target = tmp_path / "out.npz"
    np.save(tmp_path / "ids.npy", np.array([[4, 20, 0]]))
    code, out, _ = run(
        capsys, "run", str(single.path), "--input", str(tmp_path / "ids.npy"), "--output", str(target)
    )
    assert code == 0 and "wrote emb, mask" in out
    with np.load(target) as saved:
        np.testing.assert_array_equal(saved["emb"], single.tables["input_ids"][[[4, 20, 0]]])
        np.testing.assert_array_equal(saved["mask"], [[True, True, False]])
    code, out, _ = run(capsys, "run", str(single.path), "--ids", "[3, 4]", "--single-sequence")
    assert code == 0 and "emb: float32(1, 2, 4)" in out
    two = models["two"]
    np.savez(tmp_path / "two.npz", user_id=np.array([[1, 2]]), item_id=np.array([[3, 4]]))
    code, out, _ = run(capsys, "run", str(two.path), "--input", str(tmp_path / "two.npz"))
    assert code == 0 and "item_id_emb: float32(1, 2, 4)" in out
    np.savez(tmp_path / "one.npz", np.array([[4, 20, 0]]))  # one unnamed array: arr_0 is the model's input
    code, out, _ = run(capsys, "run", str(single.path), "--input", str(tmp_path / "one.npz"))
    assert code == 0 and "mask: bool(1, 3)" in out
    code, out, _ = run(capsys, "run", str(two.path), "--ids", '{"user_id": [[1]], "item_id": [[2]]}')
    assert code == 0 and "user_id_embedding_mask" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ids", "[[-1]]"], r"id -1 at position [0, 0]"),
        (["--ids", "[[1.5]]"], "ids must be integers"),
        (["--ids", "[[1"], "not valid JSON"),
        (["--input", "missing.npy"], "--input file not found"),
        (["--ids", "[[1]]", "--providers", "cuda"], "not available"),
        (["--ids", '{"zz": [[5, 0]]}'], "unknown input(s) 'zz'"),  # was run as if named input_ids
    ],
)
def test_run_errors(capsys: pytest.CaptureFixture[str], single: Built, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, "run", str(single.path), *argv)
    assert code == 1 and message in err and "Traceback" not in err
    assert err.startswith("embed-runtime run: error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("cuda, cpu", ["cuda", "cpu"]),
        ("cpu,,CPU, cuda,cpu", ["cpu", "cuda"]),
        (",", []),
    ],
)
def test_parse_providers(text: str, expected: str | list[str]) -> None:
    assert parse_providers(text) == expected


def test_a_repeated_provider_is_used_once(capsys: pytest.CaptureFixture[str], single: Built) -> None:
    """``cpu,cpu`` means ``cpu``: onnxruntime is not handed the duplicate (it would warn about it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, _ = run(capsys, "info", str(single.path), "--providers", "cpu,cpu")
    assert code == 0 and "providers in use: CPUExecutionProvider\n" in out
    assert not [w for w in caught if "Duplicate provider" in str(w.message)]


def test_threads(capsys: pytest.CaptureFixture[str], single: Built) -> None:
    assert run(capsys, "run", str(single.path), "--ids", "[[1]]", "--threads", "0")[0] == 0
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit) as info:
            cli.main(["run", str(single.path), "--ids", "[[1]]", "--threads", bad])
        assert info.value.code == 2 and "--threads" in capsys.readouterr().err


def test_run_command_prints_one_line_for_expected_errors(capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: argparse.Namespace) -> int:
        raise EmbedRuntimeError("first line\n  second line")

    assert run_command("embed-runtime x", fails, argparse.Namespace()) == 1
    assert capsys.readouterr().err == "embed-runtime x: error: first line second line\n"

    def bug(args: argparse.Namespace) -> int:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_command("embed-runtime x", bug, argparse.Namespace())


def test_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "info", str(tmp_path / "none.onnx"))
    assert code == 1 and "model file not found" in err
    (tmp_path / "bad.npy").write_bytes(b"nope")
    code, _, err = run(capsys, "info", str(tmp_path / "bad.npy"))
    assert code == 1 and "onnxruntime cannot load" in err


def test_lazy_subcommands(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "embed_runtime.serve", None)  # as if the serve extra were missing
    code, _, err = run(capsys, "serve", "model.onnx")
    assert code == 2 and "pip install 'embed-runtime[serve]'" in err

    class Fake:
        @staticmethod
        def add_arguments(parser: object) -> None:
            parser.add_argument("model")  # type: ignore[attr-defined]
            parser.add_argument("--flag", action="store_true")  # type: ignore[attr-defined]

        @staticmethod
        def main(args: object) -> int:
            print(f"bench {args.model} {args.flag}")  # type: ignore[attr-defined]
            return 0

    monkeypatch.setitem(sys.modules, "embed_runtime.bench", Fake)
    code, out, _ = run(capsys, "bench", "m.onnx", "--flag")
    assert code == 0 and out.strip() == "bench m.onnx True"
