"""``Predictor`` called directly on Ray-shaped batches (no Ray workers): every format gives what
``rt.run`` gives on the same rows; bad rows are named or routed aside by the runtime's own rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import embed_runtime
from embed_runtime import ConfigurationError, InputTypeError, InvalidInputError
from embed_runtime.scale import Predictor
from embed_runtime.scale.columns import arrow_ids

from .helpers import CLASSIFIER, MODELS, bench

RAGGED = [[4, 20, 7], [9, 3], [1], [5, 6, 7, 8, 9], [2, 2]]


FORMATS = ["pyarrow", "pandas", "pandas-objects", "numpy"]


def as_format(table: pa.Table, fmt: str) -> object:
    """A pyarrow batch as Ray hands it over in ``fmt``: pandas columns are Arrow-backed (Ray's default)
    or objects (a frame built by hand); numpy list columns are object arrays of per-row arrays."""
    if fmt == "pyarrow":
        return table
    if fmt.startswith("pandas"):
        return table.to_pandas(types_mapper=pd.ArrowDtype if fmt == "pandas" else None)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def names(batch: object) -> list[str]:
    """The column names of a returned batch, in order."""
    if isinstance(batch, pa.Table):
        return batch.column_names
    return list(batch.columns if isinstance(batch, pd.DataFrame) else batch)  # type: ignore[call-overload]


def column(batch: object, name: str) -> np.ndarray:
    """One output column of a returned batch as one array (rows stacked)."""
    if isinstance(batch, pa.Table):
        return np.array(batch.column(name).to_pylist())
    values = batch[name]  # type: ignore[index]
    return np.stack(list(values)) if np.asarray(values).dtype.kind == "O" else np.asarray(values)


@pytest.fixture(scope="module")
def rt() -> embed_runtime.Runtime:
    return embed_runtime.load(CLASSIFIER, providers="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_ragged_rows_give_what_rt_run_gives(rt: embed_runtime.Runtime, fmt: str) -> None:
    table = pa.table({"user": [10, 11, 12, 13, 14], "token_ids": RAGGED, "other": list("abcde")})
    batch = as_format(table, fmt)
    out = Predictor(CLASSIFIER, providers="cpu", key="user")(batch)
    want = rt.run(RAGGED)  # the runtime pads to the longest row, and the mask marks the padding
    assert type(out) is type(batch)
    assert names(out) == ["user", "probability", "mask"]
    assert column(out, "user").tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(column(out, "probability"), want["probability"])
    np.testing.assert_array_equal(column(out, "mask"), want["mask"])


def test_equal_length_rows_reach_the_runtime_without_a_copy() -> None:
    ids = np.arange(40, dtype=np.int64).reshape(8, 5) % 50
    values = pa.array(ids.ravel())
    fixed = pa.chunked_array([pa.FixedSizeListArray.from_arrays(values, 5)])
    listed = pa.ListArray.from_arrays(pa.array(np.arange(9, dtype=np.int32) * 5), values)
    for source in (fixed, listed, listed.slice(2, 3)):
        feed = arrow_ids(source)
        assert isinstance(feed, np.ndarray)
        np.testing.assert_array_equal(feed, ids if len(source) == 8 else ids[2:5])
        assert np.shares_memory(feed, values.to_numpy())


def test_arrow_output_schema_is_the_same_for_every_padded_length() -> None:
    predict = Predictor(CLASSIFIER, providers="cpu")
    short = predict(pa.table({"token_ids": [[1, 2]]}))
    long = predict(pa.table({"token_ids": [[1, 2, 3, 4, 5, 6]]}))
    assert short.schema == long.schema
    assert pa.types.is_fixed_size_list(short.schema.field("probability").type)  # (batch, 1): static
    assert pa.types.is_list(short.schema.field("mask").type)  # (batch, sequence): dynamic


def test_two_inputs_a_scalar_column_and_a_renamed_column() -> None:
    model = MODELS / "recommender" / "model.onnx"
    users, items = [3, 5, 39], [[10], [11], [59]]
    table = pa.table({"user": users, "item": items})
    out = Predictor(model, providers="cpu", columns={"user_id": "user", "item_id": "item"})(table)
    want = embed_runtime.load(model, providers="cpu").run({"user_id": [[u] for u in users], "item_id": items})
    np.testing.assert_array_equal(column(out, "score"), want["score"])


def test_a_bad_row_is_named_with_its_key_and_value() -> None:
    rows = [[1, 2, 3]] * 5 + [[4, 77]] + [[5]] * 2
    table = pa.table({"user": range(100, 108), "token_ids": rows})
    with pytest.raises(InvalidInputError) as err:
        Predictor(CLASSIFIER, providers="cpu", key="user")(table)
    message = str(err.value)
    assert message.startswith(
        "row 5 of a batch of 8 rows (user=105): input 'token_ids': id 77 at position [5, 1]"
    )
    assert "[0, 50)" in message
    with pytest.raises(InvalidInputError, match=r"^row 5 of a batch of 8 rows: input 'token_ids': id 77"):
        Predictor(CLASSIFIER, providers="cpu")(as_format(table, "numpy"))


def test_a_null_row_is_refused_by_the_runtime() -> None:
    table = pa.table({"user": [1, 2, 3], "token_ids": [[1, 2], None, [3]]})
    with pytest.raises(
        InputTypeError, match=r"^row 1 of a batch of 3 rows \(user=2\): input 'token_ids': row 1 is"
    ):
        Predictor(CLASSIFIER, providers="cpu", key="user")(table)


def test_rows_that_fail_only_together_name_the_batch(tmp_path: Path) -> None:
    # id 0 is a real row of this table, so the runtime does not pad: rows of 2 and 3 ids fail together
    model = bench.gather_model(tmp_path / "g.onnx", 20, 4, external=False)
    table = pa.table({"k": ["a", "b"], "ids": [[1, 2], [3, 4, 5]]})
    with pytest.raises(
        InvalidInputError, match=r"^a batch of 2 rows \(k 'a' to 'b'\): input 'ids': row 0 has 2"
    ):
        Predictor(model, providers="cpu", key="k")(table)
    out = Predictor(model, providers="cpu", key="k", on_error="column")(table)
    assert all("row 0 has 2 ids but the longest row is 3" in e for e in out.column("error").to_pylist())
    assert np.isnan(np.array(out.column("sum").to_pylist())).all()


def test_a_batch_of_bad_rows_only_keeps_the_graphs_shapes() -> None:
    out = Predictor(CLASSIFIER, providers="cpu", on_error="column")(pa.table({"token_ids": [[99], None]}))
    assert out.column("error").null_count == 0
    assert np.isnan(np.array(out.column("probability").to_pylist())).all()
    assert out.column("mask").to_pylist() == [[], []]  # (batch, sequence): no sequence to show


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_rows_routed_aside(rt: embed_runtime.Runtime, fmt: str) -> None:
    rows = [[1, 2], [3, 99], None, [4, 5, 6], [-1]]
    batch = as_format(pa.table({"user": [1, 2, 3, 4, 5], "token_ids": rows}), fmt)
    out = Predictor(CLASSIFIER, providers="cpu", key="user", on_error="column")(batch)
    errors = out["error"].to_pylist() if isinstance(out, pa.Table) else list(out["error"])
    errors = [None if e is None or e is pd.NA else e for e in errors]
    assert [e is None for e in errors] == [True, False, False, True, False]
    assert "id 99 at position [0, 1] is outside the allowed range [0, 50)" in errors[1]
    assert "None" in errors[2]
    assert "id -1" in errors[4] and "wrap" in errors[4]
    want = rt.run([[1, 2], [4, 5, 6]])  # the good rows alone, through the runtime
    probability = column(out, "probability")
    np.testing.assert_array_equal(probability[[0, 3]], want["probability"])
    assert np.isnan(probability[[1, 2, 4]]).all()
    np.testing.assert_array_equal(column(out, "mask")[[0, 3]], want["mask"])
    assert not column(out, "mask")[[1, 2, 4]].any()


def test_a_clean_batch_has_an_all_null_error_column() -> None:
    out = Predictor(CLASSIFIER, providers="cpu", on_error="column")(pa.table({"token_ids": [[1], [2, 3]]}))
    assert out.column("error").type == pa.string() and out.column("error").null_count == 2


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="on_error must be 'raise' or 'column'"):
        Predictor(CLASSIFIER, providers="cpu", on_error="skip")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match=r"unknown input\(s\) 'ids'; the model's inputs are token_ids"
    ):
        Predictor(CLASSIFIER, providers="cpu", columns={"ids": "x"})
    with pytest.raises(ConfigurationError, match=r"'mask' would be both kept and produced"):
        Predictor(CLASSIFIER, providers="cpu", keep=["mask"])
    with pytest.raises(  # the runtime's own check (Runtime.run raises the same), as documented
        InvalidInputError, match=r"^unknown output\(s\) 'logits'; the model's outputs are probability, mask$"
    ):
        Predictor(CLASSIFIER, providers="cpu", outputs=["logits"])
    with pytest.raises(InvalidInputError, match=r"^unknown output\(s\) \(none given\)"):
        Predictor(CLASSIFIER, providers="cpu", outputs=[])
    predict = Predictor(CLASSIFIER, providers="cpu", keep=["user"])
    with pytest.raises(InvalidInputError, match=r"no column\(s\) 'token_ids', 'user'; its columns are ids"):
        predict(pa.table({"ids": [[1]]}))
    with pytest.raises(InputTypeError, match="not list; use batch_format="):
        predict([[1, 2]])  # type: ignore[arg-type]


def test_outputs_can_be_chosen() -> None:
    out = Predictor(CLASSIFIER, providers="cpu", outputs="mask")(pa.table({"token_ids": [[1, 0]]}))
    assert out.column_names == ["mask"] and out.column("mask").to_pylist() == [[True, False]]


def test_a_float_row_is_refused_by_the_runtime() -> None:
    batch = {"token_ids": np.array([np.array([1, 2]), np.array([7.5])], dtype=object)}  # Ray's numpy rows
    with pytest.raises(
        InputTypeError, match=r"^row 1 of a batch of 2 rows: input 'token_ids' has dtype float64"
    ):
        Predictor(CLASSIFIER, providers="cpu")(batch)


TEXT_MODEL = MODELS / "text" / "model.onnx"


@pytest.mark.skipif(not TEXT_MODEL.is_file(), reason="no model exported from strings (models/text)")
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_column_of_strings_for_a_model_exported_from_strings(fmt: str) -> None:
    texts = ["the cat sat", "a dog", "the cat sat on a dog"]
    rt = embed_runtime.load(TEXT_MODEL, providers="cpu")
    out = Predictor(TEXT_MODEL, providers="cpu")(as_format(pa.table({rt.inputs[0].name: texts}), fmt))
    want = rt.run(texts)  # the runtime's own text front end turns the strings into ids
    np.testing.assert_array_equal(column(out, "probability"), want["probability"])
    np.testing.assert_array_equal(column(out, "mask"), want["mask"])
