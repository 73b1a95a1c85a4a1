"""Input conversion and validation: every bad input is a package error naming input, position, range."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import embed_runtime
from embed_runtime import EmbedRuntimeError, InputTypeError, InvalidInputError

from .conftest import VOCAB, Built


@pytest.fixture(scope="module")
def rt(single: Built) -> embed_runtime.Runtime:
    return embed_runtime.load(single.path, providers="cpu")


def expect(built: Built, ids: np.ndarray, name: str = "input_ids") -> dict[str, np.ndarray]:
    return {"emb": built.tables[name][ids], "mask": ids != 0}


def check(result: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(result) == set(want)
    for k, v in want.items():
        assert result[k].dtype == v.dtype, k
        np.testing.assert_array_equal(result[k], v, err_msg=k)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
)
def test_every_integer_dtype(rt: embed_runtime.Runtime, single: Built, dtype: type) -> None:
    ids = np.array([[1, 2, 0], [49 % np.iinfo(dtype).max, 0, 0]], dtype=dtype)
    check(rt.run(ids), expect(single, ids.astype(np.int64)))


def test_big_endian_and_non_contiguous(rt: embed_runtime.Runtime, single: Built) -> None:
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=">i8")
    check(rt.run(ids), expect(single, ids.astype(np.int64)))
    wide = np.arange(24).reshape(4, 6) % VOCAB
    check(rt.run(wide[:, ::2]), expect(single, wide[:, ::2]))
    check(rt.run(wide.T), expect(single, wide.T))


def test_lists_and_ragged(rt: embed_runtime.Runtime, single: Built) -> None:
    check(rt.run([[4, 20, 0]]), expect(single, np.array([[4, 20, 0]])))
    check(rt.run(((4, 20), (1, 2))), expect(single, np.array([[4, 20], [1, 2]])))
    ragged = [[4, 20, 7], [1], []]
    want = np.array([[4, 20, 7], [1, 0, 0], [0, 0, 0]])
    out = rt.run(ragged)
    check(out, expect(single, want))
    assert out["mask"].tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    check(
        rt.run([np.array([1, 2], np.int32), np.array([3], np.uint8)]),
        expect(single, np.array([[1, 2], [3, 0]])),
    )


def test_single_sequence_keeps_batch_axis(rt: embed_runtime.Runtime, single: Built) -> None:
    out = rt.run(np.array([4, 20, 0]), single_sequence=True)
    check(out, expect(single, np.array([[4, 20, 0]])))
    check(rt.run([4, 20], single_sequence=True), expect(single, np.array([[4, 20]])))
    with pytest.raises(InvalidInputError, match="single_sequence=True expects one 1-D"):
        rt.run([[1, 2]], single_sequence=True)


@pytest.mark.parametrize(
    ("ids", "error", "pattern"),
    [
        (np.array([[1, 2], [3, -1]]), InvalidInputError, r"id -1 at position \[1, 1\].*\[0, 50\).*wrap"),
        (np.array([[1, 2, 50]]), InvalidInputError, r"id 50 at position \[0, 2\].*\[0, 50\)"),
        (np.array([[0, 2**63 - 1]]), InvalidInputError, r"position \[0, 1\]"),
        (
            np.array([[1, 2**64 - 1]], np.uint64),
            InvalidInputError,
            r"18446744073709551615 at position \[0, 1\]",
        ),
        (np.array([[-128]], np.int8), InvalidInputError, r"id -128 at position \[0, 0\]"),
        (np.array([[1, 255]], np.uint8), InvalidInputError, r"id 255"),
        ([[1, 2**64]], InvalidInputError, r"does not fit in 64-bit"),
        ([[1, 2**70]], InvalidInputError, r"does not fit in 64-bit"),
        (np.array([[1.0, 2.0]]), InputTypeError, r"'input_ids' has dtype float64; ids must be integers"),
        (np.array([[1.0, np.nan]]), InputTypeError, r"NaN"),
        (np.array([[True, False]]), InputTypeError, r"bool"),
        ([[True, False]], InputTypeError, r"bool"),
        ([[1, 2.5]], InputTypeError, r"float"),
        ([[1, 2], [3, True]], InputTypeError, r"element at \[1, 1\] is True; ids must be integers, not bool"),
        (np.array([["a", "b"]]), InputTypeError, r"<U1"),
        ([["a"]], InputTypeError, r"ids must be integers"),
        (np.array([[1, 2]], dtype=object), InputTypeError, r"object"),
        ([[1, None]], InputTypeError, r"element at \[0, 1\] is None"),
        ([[1, 2], 3], InputTypeError, r"row 1 is int"),
        ("1 2 3", InputTypeError, r"str"),
        (None, InputTypeError, r"NoneType"),
        (np.array([1, 2]), InvalidInputError, r"rank 1 .* rank 2 \(batch, seq\).*single_sequence"),
        (np.zeros((1, 2, 3), np.int64), InvalidInputError, r"rank 3"),
        (np.int64(3), InvalidInputError, r"rank 0"),
        ([[[1]], [2, 3]], InvalidInputError, r"row 0 has rank 2"),
        ({"ids": [[1]]}, InvalidInputError, r"unknown input\(s\) 'ids'.*missing input\(s\) 'input_ids'"),
        (np.array([[1, 2], [3, -5]], np.complex64), InputTypeError, r"complex64"),
    ],
)
def test_rejected(rt: embed_runtime.Runtime, ids: object, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern) as info:
        rt.run(ids)
    assert isinstance(info.value, EmbedRuntimeError)
    assert isinstance(info.value, ValueError if error is InvalidInputError else TypeError)
    check(rt.run([[1, 2]]), expect_single(rt))  # the session stays usable


def expect_single(rt: embed_runtime.Runtime) -> dict[str, np.ndarray]:
    out = rt.run(np.array([[1, 2]]), outputs=["emb", "mask"])
    return {k: v.copy() for k, v in out.items()}


def test_minus_one_raw_onnxruntime_wraps_runtime_rejects(single: Built) -> None:
    """ONNX Gather wraps -1 to the last row in raw onnxruntime; the runtime refuses it."""
    sess = ort.InferenceSession(str(single.path), providers=["CPUExecutionProvider"])
    raw = sess.run(["emb"], {"input_ids": np.array([[-1]], np.int64)})[0]
    np.testing.assert_array_equal(raw[0, 0], single.tables["input_ids"][-1])
    rt = embed_runtime.load(single.path, providers="cpu")
    with pytest.raises(InvalidInputError, match=r"id -1 at position \[0, 0\] .*\[0, 50\)"):
        rt.run(np.array([[-1]]))


def test_empty_batch(rt: embed_runtime.Runtime) -> None:
    for ids in (np.zeros((0, 7), np.int64), np.zeros((0, 7), np.uint8), []):
        out = rt.run(ids)
        seq = 0 if isinstance(ids, list) else 7
        assert out["emb"].shape == (0, seq, 4) and out["emb"].dtype == np.float32
        assert out["mask"].shape == (0, seq) and out["mask"].dtype == np.bool_
    out = rt.run(np.zeros((3, 0), np.int64))
    assert out["emb"].shape == (3, 0, 4)


def test_empty_fallback_without_onnxruntime(
    rt: embed_runtime.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If onnxruntime refuses a zero-size batch, shapes come from the output descriptions."""

    class Refusing:
        def run(self, *args: object) -> None:
            raise RuntimeError("zero-size input")

    fresh = embed_runtime.load(rt.path, providers="cpu")
    monkeypatch.setattr(fresh, "session", Refusing())
    out = fresh.run(np.zeros((0, 6), np.int64))
    assert out["emb"].shape == (0, 6, 4) and out["mask"].shape == (0, 6) and out["mask"].dtype == bool


def test_two_inputs(models: dict[str, Built]) -> None:
    built = models["two"]
    rt = embed_runtime.load(built.path, providers="cpu")
    assert [s.input_dim for s in rt.inputs] == [30, 70]
    u, i = np.array([[1, 29, 0]]), np.array([[69, 0, 5]])
    out = rt.run({"user_id": u, "item_id": i})
    np.testing.assert_array_equal(out["user_id_emb"], built.tables["user_id"][u])
    np.testing.assert_array_equal(out["item_id_emb"], built.tables["item_id"][i])
    np.testing.assert_array_equal(out["user_id_embedding_mask"], u != 0)
    with pytest.raises(InvalidInputError, match=r"has 2 inputs \(user_id, item_id\); pass a dict"):
        rt.run(u)
    with pytest.raises(InvalidInputError, match=r"missing input\(s\) 'item_id'.*user_id, item_id"):
        rt.run({"user_id": u})
    with pytest.raises(InvalidInputError, match=r"'item_id': id 70 at position \[0, 1\].*\[0, 70\)"):
        rt.run({"user_id": u, "item_id": [[1, 70, 0]]})
    with pytest.raises(InvalidInputError, match=r"'user_id': id 30 "):
        rt.run({"user_id": [[30]], "item_id": [[69]]})
    with pytest.raises(
        InvalidInputError, match=r"'item_id' has 2 on axis 1 \('sequence'\) but input 'user_id' has 3"
    ):
        rt.run({"user_id": u, "item_id": [[1, 2]]})
    with pytest.raises(InvalidInputError, match=r"'item_id' has 2 on axis 0 \('batch'\)"):
        rt.run({"user_id": u, "item_id": [[1, 2, 3], [4, 5, 6]]})


def test_fixed_length(models: dict[str, Built]) -> None:
    built = models["fixed"]
    rt = embed_runtime.load(built.path, providers="cpu")
    assert rt.inputs[0].input_length == 5 and rt.inputs[0].shape == (None, 5)
    ids = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(rt.run(ids)["emb"], built.tables["input_ids"][ids])
    out = rt.run([[1, 2], [3]])  # lists are padded to the fixed length
    assert out["mask"].tolist() == [[True, True, False, False, False], [True, False, False, False, False]]
    assert rt.run([7, 8], single_sequence=True)["mask"].shape == (1, 5)
    with pytest.raises(InvalidInputError, match=r"sequence length 4 .* fixed input_length is 5"):
        rt.run(np.ones((2, 4), np.int64))
    with pytest.raises(InvalidInputError, match=r"sequence length 6 .* fixed input_length is 5"):
        rt.run(np.ones((2, 6), np.int64))
    with pytest.raises(InvalidInputError, match=r"row 1 has 6 ids but the model's fixed input_length is 5"):
        rt.run([[1], [1, 2, 3, 4, 5, 6]])
    assert rt.run(np.zeros((0, 5), np.int64))["emb"].shape == (0, 5, 4)


def test_foreign_model_checks_types_only(models: dict[str, Built]) -> None:
    built = models["foreign"]
    rt = embed_runtime.load(built.path, providers="cpu")
    assert not rt.metadata.is_embed_runtime_artifact and rt.metadata.embeddings == ()
    assert rt.inputs[0].input_dim is None
    ids = np.array([[3, 0]])
    np.testing.assert_array_equal(rt.run(ids)["emb"], built.tables["input_ids"][ids])
    with pytest.raises(InputTypeError):
        rt.run(np.array([[1.0]]))
    with pytest.raises(InvalidInputError, match=r"9223372036854775808 at position \[0, 0\].*int64"):
        rt.run(np.array([[2**63]], np.uint64))
    with pytest.raises(embed_runtime.InferenceError, match="out of data bounds"):
        rt.run(np.array([[VOCAB]]))  # no metadata: onnxruntime's own check is all there is


def test_int32_graph(models: dict[str, Built]) -> None:
    built = models["int32"]
    rt = embed_runtime.load(built.path, providers="cpu")
    assert rt.inputs[0].dtype == np.int32
    ids = np.array([[1, 49, 0]], np.int64)
    out = rt.run(ids)
    np.testing.assert_array_equal(out["emb"], built.tables["input_ids"][ids])
    np.testing.assert_array_equal(out["mask"], ids != 0)
    with pytest.raises(InvalidInputError, match=r"id 4294967297 at position \[0, 1\]"):
        rt.run(np.array([[1, 2**32 + 1]]))  # would wrap to 1 if cast without a check


def test_outputs_selection(rt: embed_runtime.Runtime, single: Built) -> None:
    ids = np.array([[1, 2]])
    assert list(rt.run(ids, outputs=["mask"])) == ["mask"]
    assert list(rt.run(ids, outputs="emb")) == ["emb"]
    with pytest.raises(
        InvalidInputError, match=r"unknown output\(s\) 'nope'; the model's outputs are emb, mask"
    ):
        rt.run(ids, outputs=["nope"])
