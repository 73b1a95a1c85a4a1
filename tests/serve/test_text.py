"""Texts over the wire: the committed text model (``models/text``) served with its string input as
``BYTES``, through tritonclient.http (JSON and Triton's length-prefixed binary encoding) and raw requests;
the answers equal Keras's recorded outputs for the golden strings (``golden.npz``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .helpers import REPO_MODELS, RawHttp, free_port, start_server, stop_server

TEXT = REPO_MODELS / "text"
Golden = tuple[list[str], dict[str, np.ndarray]]
Client = Any  # tritonclient ships no type information
MAX_BATCH = 64


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(REST, gRPC)`` addresses of a server of the text model and the (ids-only) classifier,
    ``--max-batch`` 64."""
    models = [str(TEXT / "model.onnx"), str(REPO_MODELS / "classifier" / "model.onnx")]
    grpc_port = free_port()
    args = [*models, "--max-batch", str(MAX_BATCH), "--grpc-port", str(grpc_port), "--providers", "cpu"]
    proc, address = start_server(args, tmp_path_factory.mktemp("text") / "server.log")
    yield address, f"127.0.0.1:{grpc_port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def url(urls: tuple[str, str]) -> str:
    return urls[0]


@pytest.fixture(scope="module")
def client(url: str) -> Client:
    return httpclient.InferenceServerClient(url)


@pytest.fixture(scope="module")
def golden() -> Golden:
    texts = json.loads((TEXT / "texts.json").read_text(encoding="utf-8"))
    with np.load(TEXT / "golden.npz") as data:
        return texts, {k: data[k] for k in data.files}


def _texts(texts: list[Any], binary: bool, shape: list[int] | None = None) -> Any:
    data = np.array(texts, dtype=object)
    tensor = httpclient.InferInput("text", shape or list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data.reshape(shape or data.shape), binary_data=binary)
    return tensor


def test_metadata_reports_bytes(client: Client) -> None:
    meta = client.get_model_metadata("text")
    (text,) = meta["inputs"]
    assert (text["name"], text["datatype"], text["shape"]) == ("text", "BYTES", [-1])
    assert text["parameters"]["text_layer"] == "TextVectorization"
    config = client.get_model_config("text")
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert client.get_model_metadata("classifier")["inputs"][0]["datatype"] == "INT64"


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("shape", [None, "column"], ids=["batch", "batch-by-1"])
def test_texts_give_keras_outputs(client: Client, golden: Golden, binary_in: bool, shape: str | None) -> None:
    texts, want = golden
    dims = [len(texts), 1] if shape else None
    result = client.infer("text", [_texts(texts, binary_in, dims)])
    np.testing.assert_allclose(result.as_numpy("probability"), want["output.probability"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("mask"), want["output.mask"])


def test_utf8_bytes_elements_and_empty_string(client: Client, golden: Golden) -> None:
    """``bytes`` elements (UTF-8) equal the ``str`` ones; an empty text is a row of padding."""
    texts, want = golden
    result = client.infer("text", [_texts([t.encode() for t in texts[-2:]] + [""], binary=True)])
    np.testing.assert_allclose(
        result.as_numpy("probability")[:2], want["output.probability"][-2:], rtol=0, atol=1e-5
    )
    mask = result.as_numpy("mask")
    assert mask.shape[1] == want["output.mask"][-2:].sum(axis=1).max() and not mask[2].any()


def _raw(url: str, texts_blob: bytes, count: int) -> tuple[int, str]:
    head = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [count],
                "parameters": {"binary_data_size": len(texts_blob)},
            }
        ]
    }
    header = json.dumps(head).encode()
    reply = RawHttp(url).post(
        "/v2/models/text/infer",
        header + texts_blob,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    return reply.status_code, reply.json().get("error", "")


def _element(raw: bytes, size: int | None = None) -> bytes:
    return (len(raw) if size is None else size).to_bytes(4, "little") + raw


@pytest.mark.parametrize(
    ("blob", "count", "message"),
    [
        (
            _element(b"ok \xff\xfe"),
            1,
            r"input 'text' text \[0\] is not UTF-8 \(invalid start byte at byte 3\)",
        ),
        (_element(b"abc", 40), 1, r"element at \[0\] declares 40 bytes but only 3 are left"),
        (_element(b"abcde") + b"xy", 2, r"element at \[1\] has no room left for its 4-byte length"),
        (_element(b"ab") + b"zz", 1, "2 bytes of binary BYTES data are left after its 1 length-prefixed"),
        (_element(b"ab"), 3, r"shape \[3\] of BYTES needs at least 12 \(4-byte length prefixes\)"),
    ],
    ids=["not-utf8", "length-past-end", "prefix-cut", "bytes-left-over", "too-short"],
)
def test_bad_binary_text_is_400(url: str, blob: bytes, count: int, message: str) -> None:
    status, error = _raw(url, blob, count)
    assert status == 400
    assert re.search(message, error), error


def test_bad_json_text_is_400(url: str) -> None:
    http = RawHttp(url)

    def infer(model: str, data: list[Any], datatype: str = "BYTES") -> tuple[int, str]:
        body = {
            "inputs": [
                {
                    "name": "text" if model == "text" else "token_ids",
                    "datatype": datatype,
                    "shape": [len(data)],
                    "data": data,
                }
            ]
        }
        reply = http.post(f"/v2/models/{model}/infer", json_body=body)
        return reply.status_code, reply.json()["error"]

    status, error = infer("text", ["fine", 3])
    assert status == 400 and "element at [1] is 3; BYTES data must be strings, not integers" in error
    status, error = infer("text", ["lone \ud800 surrogate"])
    assert status == 400 and "input 'text' text [0] is not valid unicode" in error
    status, error = infer("classifier", ["the cat"])
    assert status == 400 and "input 'token_ids' of model 'classifier' takes ids, not BYTES" in error


def test_too_many_texts_is_413(client: Client) -> None:
    with pytest.raises(
        InferenceServerException, match=f"over model 'text'.s limit of {MAX_BATCH} rows"
    ) as caught:
        client.infer("text", [_texts(["a"] * (MAX_BATCH + 1), binary=True)])
    assert caught.value.status() == "413"


def test_grpc_bytes(urls: tuple[str, str], golden: Golden) -> None:
    """tritonclient.grpc sends BYTES as raw contents, length-prefixed: the same answer."""
    texts, want = golden
    tensor = grpcclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    with grpcclient.InferenceServerClient(urls[1]) as client:
        result = client.infer("text", [tensor])
    np.testing.assert_allclose(result.as_numpy("probability"), want["output.probability"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("mask"), want["output.mask"])
