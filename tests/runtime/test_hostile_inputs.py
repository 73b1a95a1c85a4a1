"""Inputs shaped like attacks (issue 16): empty sequences, results whose array objects the caller changes,
huge or deeply nested requests. Each case failed before its fix; the committed reference models are ONNX
files, so these need no TensorFlow."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import embed_runtime
from embed_runtime import InputTypeError, InvalidInputError, ModelLoadError, cli
from embed_runtime.contract import KEY_EMBEDDINGS, ModelMetadata
from embed_runtime.conversion import MAX_IDS

MODELS = Path(__file__).resolve().parents[2] / "models"


def load(name: str) -> embed_runtime.Runtime:
    return embed_runtime.load(MODELS / name / "model.onnx", providers="cpu")


# --- item 2: never a different number of rows than were sent ------------------------------------------


@pytest.mark.parametrize("name", ["recurrent", "tagger"])
def test_rows_of_length_zero_are_refused_where_the_graph_cannot_run_them(
    name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    rt = load(name)
    capfd.readouterr()
    with pytest.raises(
        InvalidInputError, match=r"shape \(3, 0\).*sequences of length 0 \(onnxruntime: .*Non-zero"
    ):
        rt.run([[], [], []])
    with pytest.raises(InvalidInputError, match=r"shape \(5, 0\)"):
        list(rt.run_batched([[]] * 5, progress=False))
    assert capfd.readouterr().err == ""  # onnxruntime logged no error lines before the runtime's error
    assert rt.run([[4, 2]])[rt.outputs[0].name].shape[0] == 1  # the session still serves


@pytest.mark.parametrize("name", ["classifier", "shared"])
def test_rows_of_length_zero_keep_their_batch_where_the_graph_runs_them(name: str) -> None:
    rt = load(name)
    ids = np.zeros((3, 0), np.int64)
    result = rt.run({i.name: ids for i in rt.inputs} if len(rt.inputs) > 1 else ids)
    assert all(a.shape[0] == 3 for a in result.values()), {k: a.shape for k, a in result.items()}
    plain = rt.session.run(None, {i.name: ids for i in rt.inputs})
    for got, want in zip(result.values(), plain):
        np.testing.assert_array_equal(got, want)


def test_an_empty_batch_still_gives_empty_outputs() -> None:
    rt = load("recurrent")
    result = rt.run(np.zeros((0, 7), np.int64))
    assert result["probability"].shape == (0, 1) and result["mask"].shape == (0, 7)


@pytest.mark.parametrize("io_binding", [True, False])
def test_out_is_filled_for_rows_of_length_zero(io_binding: bool) -> None:
    options = embed_runtime.RuntimeOptions(io_binding=io_binding)  # off: out= is bound, not copied into
    rt = embed_runtime.load(MODELS / "classifier" / "model.onnx", providers="cpu", options=options)
    target = np.full((3, 1), 7.0, np.float32)
    result = rt.run(np.zeros((3, 0), np.int64), out={"probability": target})
    assert result["probability"] is target
    want = rt.session.run(["probability"], {"token_ids": np.zeros((3, 0), np.int64)})[0]
    np.testing.assert_array_equal(target, want)  # written, not left as it was


def test_a_plain_run_refuses_outputs_with_another_batch() -> None:
    rt = load("classifier")
    real = rt.session

    class Lying:
        """A session that drops the last row, as the old empty-input fallback did."""

        def run(
            self, names: list[str], feeds: dict[str, np.ndarray], options: object = None
        ) -> list[np.ndarray]:
            return [a[:-1] for a in real.run(names, feeds, options)]

    rt.session = Lying()  # type: ignore[assignment]
    with pytest.raises(
        embed_runtime.InferenceError, match=r"2 rows of 'probability' for 3 rows .* \(shape \(2, 1\)\)"
    ):
        rt._run_plain({"token_ids": np.ones((3, 4), np.int64)}, ("probability",))


# --- item 3: what a caller does to a returned array object stays with it ---------------------------------


def mutate(result: np.ndarray, how: str) -> None:
    if how == "shape":
        result.shape = (-1,)
    elif how == "writeable":
        result.flags.writeable = False
    elif how == "dtype":
        result.dtype = np.int32
    else:
        with pytest.raises(ValueError, match="does not own its data"):
            result.resize((10**6,), refcheck=False)


@pytest.mark.parametrize("how", ["shape", "writeable", "dtype", "resize"])
def test_changing_a_result_object_does_not_change_later_results(how: str) -> None:
    rt = load("classifier")
    ids = np.array([[4, 20, 7, 0]], np.int64)
    want = {k: v.copy() for k, v in rt.run(ids).items()}
    for _ in range(8):  # every buffer set of this shape is handed out and mutated at least once
        result = rt.run(ids)
        for name, value in result.items():
            assert value.shape == want[name].shape and value.dtype == want[name].dtype
            assert value.flags.writeable
            np.testing.assert_array_equal(value, want[name])
            mutate(value, how)
        del result, value


# --- item 7: huge, nested and out-of-range requests fail fast with the package's error -------------------


def test_python_ints_beyond_int64_are_named_not_called_floats() -> None:
    rt = load("classifier")
    with pytest.raises(InvalidInputError, match=r"id 9223372036854775808 at \[0, 1\] does not fit in 64-bit"):
        rt.run([[1, 2**63]])
    with pytest.raises(InputTypeError, match=r"element at \[0, 1\] is 1.5 \(float\)"):
        rt.run([[1, 1.5]])


def test_padding_a_very_ragged_list_fails_before_allocating() -> None:
    rt = load("classifier")
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=r"padded to shape \(10001, 1000000\).*split the batch"):
        rt.run([[1] * 10**6] + [[1]] * 10**4)
    assert time.perf_counter() - start < 30  # was: numpy's MemoryError for 74.5 GiB


def test_a_zero_stride_view_of_a_trillion_ids_fails_on_its_shape() -> None:
    rt = load("classifier")
    view = np.broadcast_to(np.int64(5), (10**6, 10**6))
    with pytest.raises(
        InvalidInputError, match=rf"1,000,000,000,000 ids; one call takes at most {MAX_IDS:,}"
    ):
        rt.run(view)
    with pytest.raises(InvalidInputError, match="one call takes at most"):
        rt.prepare(view)


def test_deeply_nested_lists_are_an_input_error() -> None:
    rt = load("classifier")
    deep: list[object] = [1]
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="nested sequences"):
        rt.run(deep)


def test_deeply_nested_metadata_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nested too deep"):
        ModelMetadata.from_props({KEY_EMBEDDINGS: "[" * 100_000 + "]" * 100_000})
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(MODELS / "classifier" / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == KEY_EMBEDDINGS:
            prop.value = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="nested too deep"):
        embed_runtime.load(path)


def test_cli_ids_nested_too_deep_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(MODELS / "classifier" / "model.onnx")
    assert cli.main(["run", model, "--ids", "[" * 100_000 + "]" * 100_000]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "embed-runtime run: error: --ids is JSON nested too deep; ids are a (batch, seq) list of lists"
    ]
