"""Texts over gRPC: the committed text model (``models/text``) with its ``BYTES`` input sent in
``raw_input_contents`` (tritonclient.grpc's length-prefixed encoding) and in the typed
``contents.bytes_contents``; the answers equal Keras's recorded outputs (``golden.npz``) and the errors the
REST answers to the same texts.

The server runs in a subprocess; only tritonclient's generated messages are imported here (the server's
share their ``inference`` protobuf package).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from . import test_grpc, test_text
from .helpers import REPO_MODELS, free_port, start_server, stop_server
from .test_text import TEXT, Golden

NOT_UTF8 = b"ok \xff\xfe"

# the gRPC tests' client, REST client and bare stub (over this module's ``urls``) and the golden texts
client, rest, stub = test_grpc.client, test_grpc.rest, test_grpc.stub
golden = test_text.golden


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(REST, gRPC)`` addresses of a server of the text model and the (ids-only) classifier."""
    models = [str(TEXT / "model.onnx"), str(REPO_MODELS / "classifier" / "model.onnx")]
    grpc_port = free_port()
    args = [*models, "--grpc-port", str(grpc_port), "--providers", "cpu"]
    proc, address = start_server(args, tmp_path_factory.mktemp("grpc-text") / "server.log")
    yield address, f"127.0.0.1:{grpc_port}"
    stop_server(proc)


def _typed(texts: list[bytes], shape: list[int], model: str = "text", name: str = "text") -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="BYTES", shape=shape).contents.bytes_contents.extend(texts)
    return request


def _infer(
    how: str, client: grpcclient.InferenceServerClient, stub: Any, texts: list[bytes], shape: list[int]
) -> Any:
    """The text model's result for ``texts``, sent raw by tritonclient or typed through the stub."""
    if how == "typed":
        return grpcclient.InferResult(stub.ModelInfer(_typed(texts, shape)))
    tensor = grpcclient.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape))
    return client.infer("text", [tensor])


@pytest.mark.parametrize("how", ["raw", "typed"])
@pytest.mark.parametrize("column", [False, True], ids=["batch", "batch-by-1"])
def test_texts_give_keras_outputs(
    client: grpcclient.InferenceServerClient, stub: Any, golden: Golden, how: str, column: bool
) -> None:
    texts, want = golden
    shape = [len(texts), 1] if column else [len(texts)]
    result = _infer(how, client, stub, [t.encode() for t in texts], shape)
    np.testing.assert_allclose(result.as_numpy("probability"), want["output.probability"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("mask"), want["output.mask"])


def test_typed_empty_text_is_a_row_of_padding(stub: Any, golden: Golden) -> None:
    texts, want = golden
    result = grpcclient.InferResult(stub.ModelInfer(_typed([texts[-1].encode(), b""], [2])))
    np.testing.assert_allclose(
        result.as_numpy("probability")[:1], want["output.probability"][-1:], rtol=0, atol=1e-5
    )
    mask = result.as_numpy("mask")
    assert mask.shape[1] == want["output.mask"][-1].sum() and not mask[1].any()


@pytest.mark.parametrize("how", ["raw", "typed"])
def test_text_not_utf8_is_invalid_argument_with_the_rest_message(
    client: grpcclient.InferenceServerClient, stub: Any, rest: httpclient.InferenceServerClient, how: str
) -> None:
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"fine", NOT_UTF8], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException) as over_rest:
        rest.infer("text", [tensor])
    assert "input 'text' text [1] is not UTF-8 (invalid start byte at byte 3)" in over_rest.value.message()
    if how == "typed":
        with pytest.raises(grpc.RpcError) as typed:
            stub.ModelInfer(_typed([b"fine", NOT_UTF8], [2]))
        code, message = typed.value.code(), typed.value.details()
    else:
        with pytest.raises(InferenceServerException) as raw:
            _infer("raw", client, stub, [b"fine", NOT_UTF8], [2])
        code, message = raw.value.status(), raw.value.message()
    assert str(code) == "StatusCode.INVALID_ARGUMENT"
    assert message == over_rest.value.message()


def test_typed_texts_to_an_ids_model_is_invalid_argument_with_the_rest_message(
    stub: Any, rest: httpclient.InferenceServerClient
) -> None:
    tensor = httpclient.InferInput("token_ids", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"the cat"], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException) as over_rest:
        rest.infer("classifier", [tensor])
    with pytest.raises(grpc.RpcError) as over_grpc:
        stub.ModelInfer(_typed([b"the cat"], [1], model="classifier", name="token_ids"))
    assert over_grpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'token_ids' of model 'classifier' takes ids, not BYTES" in over_grpc.value.details()
    assert over_grpc.value.details() == over_rest.value.message()


def _wrong_field() -> Any:
    request = service_pb2.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.int_contents.append(3)
    return request


def _mixed_with_raw() -> Any:
    request = _typed([b"a"], [1])
    request.inputs.add(name="other", datatype="BYTES", shape=[1])
    request.raw_input_contents.extend([b"", b""])
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_typed([b"a", b"b"], [3]), "input 'text': shape [3] holds 3 elements but bytes_contents has 2"),
        (
            _typed([b"a", b"b", b"c"], [2, 1]),
            "input 'text': shape [2, 1] holds 2 elements but bytes_contents has 3",
        ),
        (
            _typed([b"a"], [-1]),
            "input 'text': 'shape' must be a list of non-negative integers below 2**63, found [-1]",
        ),
        (_wrong_field(), "input 'text': BYTES contents go in bytes_contents, but int_contents is set"),
        (
            _mixed_with_raw(),
            "input 'text' has contents although the request has raw_input_contents; send every input one way",
        ),
    ],
    ids=["too-few", "too-many", "negative-dim", "wrong-field", "mixed-with-raw"],
)
def test_malformed_typed_texts_are_invalid_argument(stub: Any, request_: Any, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
