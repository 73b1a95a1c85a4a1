"""Smoke tests of ``embed-runtime bench``: it runs on a tiny model and prints the expected rows.

No timing is asserted: only that every contender is measured and reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from embed_runtime import bench  # noqa: E402
from embed_runtime.contract import EmbeddingInfo, ModelMetadata  # noqa: E402

ROWS, DIM = 100, 8
TINY = ["--quick", "--budget", "0.002", "--rounds", "2", "--min-samples", "2", "--shapes", "1x4", "3x5"]
EXPECTED_ROWS = (
    bench.RT_RUN,
    bench.RT_NO_BINDING,
    bench.RT_OUT,
    bench.ORT_RUN,
    bench.VALIDATION,
    bench.NP_TAKE,
    bench.FLOOR,
)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    mask: bool,
    seq: str | int = "sequence",
) -> Path:
    table = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        outputs,
        [
            numpy_helper.from_array(table, "embedding.embeddings"),
            numpy_helper.from_array(np.array(0), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = EmbeddingInfo(
        layer="embedding",
        inputs=("input_ids",),
        input_dim=ROWS,
        output_dim=DIM,
        mask_zero=mask,
        padding_id=0 if mask else None,
        mask_output="mask" if mask else None,
    )
    helper.set_model_props(model, ModelMetadata(embeddings=(info,)).to_props())
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Gather on a 100x8 initializer plus the Equal/Not mask output, with our metadata."""
    nodes = [
        helper.make_node("Gather", ["embedding.embeddings", "input_ids"], ["embedding"]),
        helper.make_node("Equal", ["input_ids", "zero"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["mask"]),
    ]
    outputs = [
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "sequence", DIM]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "sequence"]),
    ]
    return _save(tmp_path_factory.mktemp("bench") / "tiny.onnx", nodes, outputs, mask=True)


@pytest.fixture(scope="module")
def scaled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lookup followed by a Mul: not a bare lookup, so ``np.take`` must be skipped."""
    nodes = [
        helper.make_node("Gather", ["embedding.embeddings", "input_ids"], ["looked_up"]),
        helper.make_node("Add", ["looked_up", "looked_up"], ["embedding"]),
    ]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "sequence", DIM])]
    return _save(tmp_path_factory.mktemp("bench") / "scaled.onnx", nodes, outputs, mask=False)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare lookup whose sequence length is fixed at 5 (like ``input_length=5``)."""
    nodes = [helper.make_node("Gather", ["embedding.embeddings", "input_ids"], ["embedding"])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 5, DIM])]
    return _save(tmp_path_factory.mktemp("bench") / "fixed.onnx", nodes, outputs, mask=False, seq=5)


def _args(model: Path, extra: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([str(model), *extra])


def _sections(text: str) -> dict[str, str]:
    parts = text.split("\n## ")[1:]
    return {p.split(" ", 1)[0]: p for p in parts}


def test_bench_prints_every_contender_per_shape(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(_args(tiny_model, TINY)) == 0
    sections = _sections(capsys.readouterr().out)
    assert set(sections) == {"1x4", "3x5"}
    for section in sections.values():
        rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
        assert rows[0] == "contender"
        assert sorted(rows[1:]) == sorted(EXPECTED_ROWS)


def test_bench_writes_json(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(_args(tiny_model, [*TINY, "--json", str(out)])) == 0
    report = json.loads(out.read_text())
    assert set(report["shapes"]) == {"1x4", "3x5"}
    for stats in report["shapes"].values():
        assert set(stats) == set(EXPECTED_ROWS)
        assert all(s["min"] <= s["median"] <= s["max"] and s["samples"] >= 2 for s in stats.values())


def test_np_take_is_skipped_when_the_model_is_not_a_bare_lookup(
    scaled_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(_args(scaled_model, TINY)) == 0
    text = capsys.readouterr().out
    assert "np.take skipped" in text
    assert f"| {bench.NP_TAKE} |" not in text


def test_lookup_table_reads_the_initializer_back(tiny_model: Path) -> None:
    table = bench.lookup_table(tiny_model, "embedding")
    expected = numpy_helper.to_array(onnx.load(str(tiny_model)).graph.initializer[0])
    assert table is not None
    np.testing.assert_array_equal(table, expected)


def test_lookup_table_of_a_float_data_initializer(tmp_path: Path) -> None:
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    init = helper.make_tensor("t", TensorProto.FLOAT, [4, 3], table.ravel().tolist())  # float_data
    graph = helper.make_graph(
        [helper.make_node("Gather", ["t", "ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 3])],
        [init],
    )
    path = tmp_path / "float_data.onnx"
    onnx.save(helper.make_model(graph), path)
    np.testing.assert_array_equal(bench.lookup_table(path, "out"), table)
    assert bench.lookup_table(path, "other") is None


def test_lookup_table_is_none_for_a_computed_output(scaled_model: Path) -> None:
    assert bench.lookup_table(scaled_model, "embedding") is None


def test_default_shapes_follow_a_fixed_length(fixed_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--quick", "--budget", "0.002", "--rounds", "2", "--min-samples", "2"]
    assert bench.main(_args(fixed_model, tiny)) == 0
    assert set(_sections(capsys.readouterr().out)) == {"1x5", "32x5", "512x5"}


def test_explicit_shapes_of_another_length_are_skipped(
    fixed_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(_args(fixed_model, [*TINY[:-2], "2x5", "2x7"])) == 0
    text = capsys.readouterr().out
    assert "## 2x7: skipped" in text and "## 2x5 (" in text


def test_bad_shape_is_a_usage_error(tiny_model: Path) -> None:
    with pytest.raises(SystemExit):
        _args(tiny_model, ["--shapes", "16"])


def test_module_entry_point(tiny_model: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embed_runtime.bench", str(tiny_model), *TINY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "## 1x4" in proc.stdout and f"| {bench.RT_RUN} |" in proc.stdout


CLI = Path(sys.executable).with_name("embed-runtime")


@pytest.mark.skipif(
    importlib.util.find_spec("embed_runtime.cli") is None or not CLI.exists(),
    reason="the CLI is not installed",
)
def test_cli_bench_subcommand(tiny_model: Path) -> None:
    proc = subprocess.run(
        [str(CLI), "bench", str(tiny_model), *TINY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "## 3x5" in proc.stdout and f"| {bench.FLOOR} |" in proc.stdout
