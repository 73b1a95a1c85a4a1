"""The lookup fast path (:mod:`embed_runtime.lookup`): the same bytes and the same errors as onnxruntime on
every artifact that declares pure lookups, a refuted declaration caught at load, and the switches."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import embed_runtime
from embed_runtime import RuntimeOptions
from embed_runtime.contract import KEY_EMBEDDINGS, EmbeddingInfo, ModelMetadata
from embed_runtime.lookup import LookupWarning

from .conftest import Built

REPO = Path(__file__).resolve().parents[2]
SEED = {
    "float32": REPO / "models" / "seed" / "model.onnx",
    "float16": REPO / "examples" / "web" / "models" / "seed-float16.onnx",
    "int8": REPO / "examples" / "web" / "models" / "seed-int8.onnx",
}
OFF = RuntimeOptions(lookup_fast_path=False)


def load(path: Path, options: RuntimeOptions | None = None) -> embed_runtime.Runtime:
    return embed_runtime.load(path, providers="cpu", options=options)


class NoSession:
    """Stands in for the session once the tables are read: a call that reaches onnxruntime fails."""

    def run(self, *args: object) -> None:
        raise AssertionError("onnxruntime was called: the lookup path did not answer")

    def io_binding(self) -> None:
        raise AssertionError("onnxruntime was called: the lookup path did not answer")


def numpy_only(path: Path) -> embed_runtime.Runtime:
    """``path`` loaded with the lookup path, which must then answer without onnxruntime."""
    rt = load(path)
    assert rt.execution.startswith("numpy lookup"), rt.execution
    rt.session = NoSession()
    return rt


def outcome(call: Callable[[], dict[str, np.ndarray]]) -> Any:
    """The result as (name, dtype, shape, bytes) per output, or the exception's type and message."""
    try:
        result = call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return [(n, a.dtype, a.shape, a.tobytes()) for n, a in result.items()]


def assert_same(fast: embed_runtime.Runtime, slow: embed_runtime.Runtime, inputs: Any, **kw: Any) -> Any:
    got = outcome(lambda: fast.run(inputs, **kw))
    assert got == outcome(lambda: slow.run(inputs, **kw)), (inputs, kw)
    return got


def declare(src: Path, dst: Path, outputs: dict[str, str]) -> Path:
    """A copy of ``src`` whose metadata declares ``outputs`` (``{layer: output}``) as pure lookups."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == KEY_EMBEDDINGS:
            entries = json.loads(prop.value)
            for entry in entries:
                if entry["layer"] in outputs:
                    entry["lookup_output"] = outputs[entry["layer"]]
            prop.value = json.dumps(entries)
    onnx.save(model, str(dst))
    return dst


def compact_model(path: Path, form: str, length: int | None = None, rows: int = 40, dim: int = 3) -> Path:
    """A one-table model in the exporter's lookup ``form`` (``float32``, ``float16``, ``int8-mul``,
    ``int8-div``) with a mask, declared; the float32 one also has a non-lookup output (a sum of the rows)."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((rows, dim)).astype(np.float32)
    seq: int | str = length or "sequence"
    nodes, inits = [], [numpy_helper.from_array(np.array(0, np.int64), "zero")]
    stored: np.ndarray = values if form == "float32" else values.astype(np.float16)
    if form.startswith("int8"):
        stored = rng.integers(-127, 128, (rows, dim)).astype(np.int8)
        inits.append(numpy_helper.from_array(rng.uniform(0.01, 2, (rows, 1)).astype(np.float32), "t_scale"))
    inits.append(numpy_helper.from_array(stored, "t"))
    gathered = "rows" if form == "float32" else "stored"
    nodes.append(helper.make_node("Gather", ["t", "ids"], [gathered], axis=0))
    if form == "float16":
        nodes.append(helper.make_node("Cast", ["stored"], ["rows"], to=TensorProto.FLOAT))
    elif form.startswith("int8"):
        nodes.append(helper.make_node("Cast", ["stored"], ["float"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Gather", ["t_scale", "ids"], ["scale"], axis=0))
        nodes.append(helper.make_node("Mul" if form == "int8-mul" else "Div", ["float", "scale"], ["rows"]))
    nodes += [helper.make_node("Equal", ["ids", "zero"], ["eq"]), helper.make_node("Not", ["eq"], ["mask"])]
    nodes.append(helper.make_node("ReduceSum", ["rows"], ["total"], keepdims=0))
    outputs = [
        helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", seq, dim]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", seq]),
    ]
    if form == "float32":  # one model also has an output that is no lookup
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq])
    graph = helper.make_graph(nodes, "lookup", [ids], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    info = EmbeddingInfo("t", ("ids",), rows, dim, True, 0, "mask", lookup_output="rows")
    helper.set_model_props(
        model, ModelMetadata(embeddings=(info,), raw={"embed_runtime.format": "1"}).to_props()
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- the same results ---------------------------------------------------------------------------------


def seed_cases() -> list[tuple[Any, dict[str, Any]]]:
    rng = np.random.default_rng(0)
    cases: list[tuple[Any, dict[str, Any]]] = []
    for batch in (0, 1, 2, 3, 7, 33):
        ids = rng.integers(0, 1000, (batch, 10))
        cases += [(ids.astype(dtype), {}) for dtype in (np.int64, np.int32, np.uint16, np.uint64)]
    cases += [
        (rng.integers(0, 1000, (4, 10)).tolist(), {}),
        (np.asfortranarray(rng.integers(0, 1000, (3, 10))), {}),
        (rng.integers(0, 1000, 10), {"single_sequence": True}),
        (list(range(990, 1000)), {"single_sequence": True}),
        (rng.integers(0, 1000, (2, 10)), {"outputs": "embedding"}),
        (np.full((2, 10), 999), {}),
        ([], {}),
    ]
    return cases


@pytest.mark.parametrize("dtype", list(SEED))
def test_seed_artifacts_answer_from_numpy_with_the_bytes_of_onnxruntime(dtype: str) -> None:
    fast, slow = numpy_only(SEED[dtype]), load(SEED[dtype], OFF)
    assert slow.execution == "onnxruntime: RuntimeOptions(lookup_fast_path=False)"
    assert "execution='numpy lookup (embedding 1000x64 float32)'" in repr(load(SEED[dtype]))
    for inputs, kw in seed_cases():
        got = assert_same(fast, slow, inputs, **kw)
        assert isinstance(got, list), got
    ids = np.random.default_rng(1).integers(0, 1000, (5, 10))
    first = fast.run(ids)["embedding"]
    kept = first.copy()
    second = fast.run(ids)["embedding"]  # the hot path twice: a fresh array each time
    np.testing.assert_array_equal(first, kept)
    assert first is not second and first.flags.writeable and first.flags.owndata
    target = np.empty((5, 10, 64), np.float32)
    assert fast.run(ids, out=target)["embedding"] is target
    assert target.tobytes() == slow.run(ids)["embedding"].tobytes()


@pytest.mark.parametrize("form", ["float32", "float16", "int8-mul", "int8-div"])
@pytest.mark.parametrize("length", [None, 4])
def test_every_lookup_form_with_its_mask(form: str, length: int | None, tmp_path: Path) -> None:
    path = compact_model(tmp_path / "m.onnx", form, length)
    fast, slow = load(path), load(path, OFF)
    assert fast.execution.startswith("numpy lookup") and "mask ids != 0" in fast.execution
    rng = np.random.default_rng(2)
    cols = length or 6
    cases: list[Any] = [rng.integers(0, 40, (b, cols)) for b in (0, 1, 5, 70)]
    cases += [[[1, 2], [0, 3, 39]], rng.integers(0, 40, (3, cols)).astype(np.int16), []]
    if length is None:
        cases += [np.zeros((3, 0), np.int64), [[], []]]
    for inputs in cases:
        assert_same(fast, slow, inputs)
        assert_same(fast, slow, inputs, outputs=["mask", "rows"])
    if form == "float32":  # the non-lookup output comes from onnxruntime, alone or with the others
        ids = rng.integers(0, 40, (2, cols))
        assert_same(fast, slow, ids, outputs="total")
        assert set(fast.run(ids)) == {"rows", "mask", "total"}
        fast.session = NoSession()
        assert fast.run(ids, outputs=["rows", "mask"])["mask"].tolist() == (ids != 0).tolist()


def test_models_with_two_inputs_and_int32_ids(models: dict[str, Built], tmp_path: Path) -> None:
    two = declare(models["two"].path, tmp_path / "two.onnx", {"user_id_embedding": "user_id_emb",
                                                               "item_id_embedding": "item_id_emb"})  # fmt: skip
    narrow = declare(models["int32"].path, tmp_path / "int32.onnx", {"input_ids_embedding": "emb"})
    rng = np.random.default_rng(3)
    fast, slow = numpy_only(two), load(two, OFF)
    for batch in (0, 1, 4):
        feeds = {"user_id": rng.integers(0, 30, (batch, 3)), "item_id": rng.integers(0, 70, (batch, 3))}
        assert_same(fast, slow, feeds)
        assert_same(fast, slow, feeds, outputs=["item_id_emb"])
    assert_same(fast, slow, {"user_id": [[1]], "item_id": [[2], [3]]})  # batch sizes differ: same error
    fast, slow = numpy_only(narrow), load(narrow, OFF)
    for ids in (rng.integers(0, 50, (4, 3)), rng.integers(0, 50, (4, 3)).astype(np.int32), [[1], [2, 3]]):
        assert_same(fast, slow, ids)


@pytest.mark.parametrize(
    ("shape", "dtype", "value"),
    [
        (["batch"], TensorProto.FLOAT, [0.5, 2.0]),
        (["batch", 2, "width"], TensorProto.FLOAT, np.ones((2, 2, 3), np.float32)),
        (["batch", 1], TensorProto.STRING, np.array([["x"], ["y"]], dtype=object)),
    ],
)
def test_another_input_of_any_rank_beside_a_lookup(
    shape: list[Any], dtype: int, value: Any, tmp_path: Path
) -> None:
    """The probe feeds every other input in its own shape (here passed through to an output that is no
    lookup): the declared lookup is confirmed, not refused with a warning."""
    table = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["t", "ids"], ["rows"], axis=0),
             helper.make_node("Identity", ["extra"], ["extra_out"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("extra", dtype, shape)],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", "seq", 3]),
         helper.make_tensor_value_info("extra_out", dtype, shape)],
        initializer=[numpy_helper.from_array(table, "t")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    info = EmbeddingInfo("t", ("ids",), 40, 3, False, None, None, lookup_output="rows")
    helper.set_model_props(
        model, ModelMetadata(embeddings=(info,), raw={"embed_runtime.format": "1"}).to_props()
    )
    onnx.save(model, str(tmp_path / "extra.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LookupWarning)
        fast = load(tmp_path / "extra.onnx")
    assert fast.execution == "numpy lookup (rows 40x3 float32)"
    ids = np.array([[1, 39, 0], [5, 6, 7]])
    np.testing.assert_array_equal(fast.run({"ids": ids, "extra": value}, outputs="rows")["rows"], table[ids])


def test_committed_models_other_than_the_seed_stay_on_onnxruntime() -> None:
    for folder in sorted((REPO / "models").iterdir()):
        if (folder / "model.onnx").exists():
            execution = load(folder / "model.onnx").execution
            assert execution.startswith("numpy lookup" if folder.name == "seed" else "onnxruntime"), folder


# --- the same errors ------------------------------------------------------------------------------------


HOSTILE: list[Any] = [
    np.full((1, 10), -1), np.full((2, 10), 1000), np.full((1, 10), 2**40), np.full((1, 10), -(2**63)),
    np.array([[2**64 - 1] * 10], np.uint64), np.full((1, 10), 1.0), np.full((1, 10), "1"), np.ones(10, np.int64),
    np.ones((1, 10, 1), np.int64), np.ones((1, 9), np.int64), np.ones((1, 11), np.int8), [[1] * 11],
    [[1.5] * 10], [["a"] * 10], [[3, 4, 5]], None, 7, np.int64(3), {"input_ids": np.ones((1, 10), np.int64), "x": 1},
]  # fmt: skip


@pytest.mark.parametrize("dtype", list(SEED))
def test_hostile_ids_get_the_errors_of_the_onnxruntime_path(dtype: str) -> None:
    fast, slow = numpy_only(SEED[dtype]), load(SEED[dtype], OFF)
    for inputs in HOSTILE:
        got = assert_same(fast, slow, inputs)
        assert isinstance(got, tuple) and got[0] in ("InvalidInputError", "InputTypeError"), (inputs, got)
    got = assert_same(fast, slow, np.full((2, 10), 5), outputs="nope")
    assert got[0] == "InvalidInputError"
    assert_same(fast, slow, np.full((2, 10), -3), single_sequence=True)


def test_hostile_ids_on_a_dynamic_length_model(tmp_path: Path) -> None:
    path = compact_model(tmp_path / "m.onnx", "int8-mul")
    fast, slow = load(path), load(path, OFF)
    for inputs in (
        [[1, -1]],
        [[40]],
        np.full((2, 3), 40, np.uint8),
        [[1], [2, "x"]],
        np.ones((2, 2), np.float32),
    ):
        got = assert_same(fast, slow, inputs)
        assert isinstance(got, tuple), (inputs, got)


# --- refused declarations and the switches ---------------------------------------------------------------


def test_a_false_declaration_is_caught_by_the_probe_and_runs_on_onnxruntime(tmp_path: Path) -> None:
    """The tagger's ``tags`` depend on the whole sequence: a table read on ids 0..n-1 looks fine (right
    shape), only the probe shows it differs; without the probe this model would answer wrongly."""
    lying = declare(
        REPO / "models" / "tagger" / "model.onnx", tmp_path / "tagger.onnx", {"embedding": "tags"}
    )
    with pytest.warns(LookupWarning, match=r"output 'tags' on probe ids differs from onnxruntime's"):
        rt = load(lying)
    assert rt.execution.startswith("onnxruntime: output 'tags'")
    slow = load(REPO / "models" / "tagger" / "model.onnx")
    ids = np.random.default_rng(4).integers(1, 20, (3, 6))
    assert outcome(lambda: rt.run(ids)) == outcome(lambda: slow.run(ids))


def test_a_declaration_that_does_not_fit_the_graph_is_refused(tmp_path: Path) -> None:
    lying = declare(
        REPO / "models" / "classifier" / "model.onnx", tmp_path / "c.onnx", {"embedding": "probability"}
    )
    with pytest.warns(LookupWarning, match=r"output 'probability' has shape"):
        assert load(lying).execution.startswith("onnxruntime")
    unknown = declare(
        REPO / "models" / "classifier" / "model.onnx", tmp_path / "u.onnx", {"embedding": "nope"}
    )
    with pytest.warns(LookupWarning, match=r"declares output 'nope'"):
        assert load(unknown).execution.startswith("onnxruntime")


def test_big_tables_and_the_switch_stay_on_onnxruntime_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = load(SEED["float32"], RuntimeOptions(lookup_max_bytes=1000 * 64 * 4 - 1))
        assert "lookup_max_bytes=255,999" in small.execution
        assert load(SEED["float32"], RuntimeOptions(lookup_max_bytes=1000 * 64 * 4)).execution.startswith(
            "numpy"
        )
        assert load(SEED["float32"], OFF)._lookup is None
    with pytest.raises(embed_runtime.ConfigurationError, match="lookup_max_bytes"):
        RuntimeOptions(lookup_max_bytes=-1)


def test_lookup_output_in_the_contract() -> None:
    entry = {"layer": "e", "inputs": ["ids"], "input_dim": 3, "output_dim": 2, "mask_zero": False}
    assert "lookup_output" not in EmbeddingInfo.from_dict(entry).to_dict()  # older files read the same
    declared = EmbeddingInfo.from_dict({**entry, "lookup_output": "rows"})
    assert declared.lookup_output == "rows" and EmbeddingInfo.from_dict(declared.to_dict()) == declared
    for bad in ({**entry, "lookup_output": 3}, {**entry, "inputs": [], "lookup_output": "rows"}):
        with pytest.raises(ValueError, match="'lookup_output' must be an output name"):
            EmbeddingInfo.from_dict(bad)
