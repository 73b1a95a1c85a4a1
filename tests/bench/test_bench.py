"""``embed-runtime bench``: it runs on a tiny model and prints the expected rows; the table behind
``np.take`` is read through the model; errors are one line with exit status 1.

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

from embed_runtime import Runtime, RuntimeOptions, bench, cli, load, timing  # noqa: E402
from embed_runtime.contract import EmbeddingInfo, ModelMetadata  # noqa: E402

ROWS, DIM = 100, 8
TINY = ["--quick", "--budget", "0.002", "--rounds", "2", "--min-samples", "2", "--shapes", "1x4", "3x5"]
EXPECTED_ROWS = (
    timing.RT_RUN,
    timing.RT_NO_BINDING,
    timing.RT_OUT,
    timing.ORT_RUN,
    timing.VALIDATION,
    timing.NP_TAKE,
    timing.FLOOR,
)


TABLE = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    mask: bool,
    seq: str | int = "sequence",
) -> Path:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        outputs,
        [
            numpy_helper.from_array(TABLE, "embedding.embeddings"),
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


def _after_lookup(
    path: Path, *nodes: onnx.NodeProto, shape: tuple[str | int, ...] = ("batch", "sequence", DIM)
) -> Path:
    """``Gather(table, input_ids)`` as ``looked_up``, then ``nodes`` computing the output ``embedding``."""
    lookup = helper.make_node("Gather", ["embedding.embeddings", "input_ids"], ["looked_up"])
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, list(shape))]
    return _save(path, [lookup, *nodes], outputs, mask=False)


@pytest.fixture(scope="module")
def scaled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``table[ids] + table[ids]``: still one row per id, of the table ``2 * TABLE``."""
    add = helper.make_node("Add", ["looked_up", "looked_up"], ["embedding"])
    return _after_lookup(tmp_path_factory.mktemp("bench") / "scaled.onnx", add)


@pytest.fixture(scope="module")
def running_sum_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cumulative sum of the looked-up rows along the sequence: each row depends on the ids before it,
    so no table reproduces it and ``np.take`` must be skipped."""
    axis = helper.make_node("Constant", [], ["axis"], value=numpy_helper.from_array(np.array(1)))
    cumsum = helper.make_node("CumSum", ["looked_up", "axis"], ["embedding"])
    return _after_lookup(tmp_path_factory.mktemp("bench") / "cumsum.onnx", axis, cumsum)


def _fixed(path: Path, length: int) -> Path:
    """A bare lookup whose sequence length is fixed (like ``input_length=length``)."""
    nodes = [helper.make_node("Gather", ["embedding.embeddings", "input_ids"], ["embedding"])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", length, DIM])]
    return _save(path, nodes, outputs, mask=False, seq=length)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare lookup whose sequence length is fixed at 5."""
    return _fixed(tmp_path_factory.mktemp("bench") / "fixed.onnx", 5)


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


def test_np_take_is_skipped_when_no_table_reproduces_the_output(
    running_sum_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(_args(running_sum_model, TINY)) == 0
    text = capsys.readouterr().out
    assert "np.take skipped: it does not reproduce the model's output" in text
    assert f"| {timing.NP_TAKE} |" not in text


def test_np_take_times_any_per_id_output(scaled_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``table[ids] + table[ids]`` is ``np.take(2 * table, ids)``: a fair numpy baseline, so it is timed."""
    assert bench.main(_args(scaled_model, TINY)) == 0
    sections = _sections(capsys.readouterr().out)
    assert all(f"| {timing.NP_TAKE} |" in section for section in sections.values())


def _plain(path: Path) -> Runtime:
    return load(path, providers="cpu", options=RuntimeOptions(io_binding=False))


def test_lookup_table_reads_the_initializer_back(tiny_model: Path, scaled_model: Path) -> None:
    np.testing.assert_array_equal(bench.lookup_table(_plain(tiny_model)), TABLE)
    np.testing.assert_array_equal(bench.lookup_table(_plain(scaled_model)), 2 * TABLE)


@pytest.mark.parametrize("length", [5, 7, ROWS, ROWS + 3])
def test_lookup_table_of_a_fixed_length_pads_and_cuts_back(tmp_path: Path, length: int) -> None:
    """100 ids in rows of 5 fit; in rows of 7 the last row is padded; longer than the table, one row."""
    rt = _plain(_fixed(tmp_path / f"fixed{length}.onnx", length))
    np.testing.assert_array_equal(bench.lookup_table(rt), TABLE)


def test_lookup_table_is_capped(tiny_model: Path) -> None:
    rt = _plain(tiny_model)
    assert bench.lookup_table(rt, max_bytes=TABLE.nbytes).shape == TABLE.shape
    with pytest.raises(bench.NoTable, match=r"100 rows.* over the"):
        bench.lookup_table(rt, max_bytes=TABLE.nbytes - 1)
    assert bench.TABLE_BYTES_CAP == 256 * 2**20  # the cap the module documents


def test_lookup_table_needs_one_row_per_id(tmp_path: Path) -> None:
    mean = helper.make_node("ReduceMean", ["looked_up"], ["embedding"], axes=[1], keepdims=0)
    rt = _plain(_after_lookup(tmp_path / "mean.onnx", mean, shape=("batch", DIM)))
    with pytest.raises(bench.NoTable, match="not one row per id"):
        bench.lookup_table(rt)


def test_lookup_table_needs_the_id_range(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["t", "ids"], ["out"])],
        "foreign",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", DIM])],
        [numpy_helper.from_array(TABLE, "t")],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(bench.NoTable, match=r"no id range \(input_dim\) for its input 'ids'"):
        bench.lookup_table(_plain(path))


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
    assert "## 1x4" in proc.stdout and f"| {timing.RT_RUN} |" in proc.stdout


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
    assert "## 3x5" in proc.stdout and f"| {timing.FLOOR} |" in proc.stdout


def test_cli_bench_drops_a_repeated_provider(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--providers cpu,cpu`` is split and means ``cpu``, as for ``run`` and ``info``."""
    assert cli.main(["bench", str(tiny_model), "--providers", "cpu,cpu", *TINY]) == 0
    assert "providers CPUExecutionProvider, threads" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.onnx"], "model file not found: missing.onnx"),
        (["MODEL", "--providers", "nope"], "execution provider 'nope' was requested but is not available"),
    ],
)
def test_cli_bench_errors_are_one_line(
    tiny_model: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [str(tiny_model) if a == "MODEL" else a for a in argv]
    assert cli.main(["bench", *argv, *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embed-runtime bench: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_module_entry_point_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embed_runtime.bench", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.startswith("embed-runtime bench: error: model file not found")
        and proc.stderr.count("\n") == 1
    )
