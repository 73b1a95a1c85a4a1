"""A bounded fuzz of inference request bodies against a live loopback server (hypothesis).

JSON bodies (well-formed requests, near misses and junk: wrong names, shapes, datatypes, values, NaN tokens,
nesting, outputs, parameters), binary-extension bodies (headers whose sizes and lengths are right or wrong)
and either kind cut short, padded or gzip-compressed. Every answer must be a 2xx or a 4xx with an
``{"error": ...}`` in strict JSON, never a 5xx; the server must stay up; and its resident memory after the
fuzz stays within :data:`RSS_MARGIN_MIB` of what it was after a warm-up of valid requests. About 2,000
requests in all, under 10 s on a 2-core machine.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed_runtime import load
from tests.reliability.live import MODELS, LiveServer, MiB
from tests.serve.helpers import REPO_MODELS, Reply

RSS_MARGIN_MIB = 48
"""How much the server's resident memory may grow over the fuzz, after the warm-up."""

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RUNTIMES = {name: load(REPO_MODELS / name / "model.onnx", providers="cpu") for name in MODELS}
INPUT_NAMES = sorted({i.name for rt in RUNTIMES.values() for i in rt.inputs})
OUTPUT_NAMES = sorted({o.name for rt in RUNTIMES.values() for o in rt.outputs})
DATATYPES = ["INT64", "INT32", "UINT8", "UINT64", "FP32", "FP16", "BOOL", "BYTES", "INT128", ""]


def _mostly(value: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``value`` three times out of four, else a draw of ``other``: most requests are near misses."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda keep: st.just(value) if keep else other)


_scalars = st.integers(-2, 70) | st.integers() | st.booleans() | st.floats() | st.none() | st.text(max_size=3)
_data = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=40) | st.just([])
_dims = st.integers(0, 12) | st.sampled_from([-1, 2**31, 2**62, 2**63, 2**64, 100_000_000])
_shapes = st.lists(_dims, max_size=4) | st.sampled_from([None, "2,3", [1.5], [True, 2]])
_junk_input = st.fixed_dictionaries(
    {
        "name": st.sampled_from(INPUT_NAMES),
        "shape": _shapes,
        "datatype": st.sampled_from(DATATYPES),
        "data": _data,
    }
)


@st.composite
def _valid_input(draw: st.DrawFn, model: str, name: str) -> tuple[str, np.ndarray]:
    """Ids the model takes for input ``name``, of a drawn shape (sometimes with empty rows)."""
    spec = next(i for i in RUNTIMES[model].inputs if i.name == name)
    rows = draw(st.integers(0, 5))
    length = spec.input_length if spec.input_length is not None else draw(st.integers(0, 8))
    ids = np.random.default_rng(draw(st.integers(0, 2**32))).integers(0, spec.input_dim or 1, (rows, length))
    return name, ids


@st.composite
def _model_and_inputs(draw: st.DrawFn) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """A model and inputs for it: right, or with a wrong name, a batch that differs, an id out of range."""
    model = draw(st.sampled_from(MODELS))
    inputs = [draw(_valid_input(model, i.name)) for i in RUNTIMES[model].inputs]
    if inputs and draw(_mostly(False, st.just(True))):
        name, ids = inputs[0]
        twist = draw(st.sampled_from(["rename", "out-of-range", "drop", "transpose"]))
        if twist == "rename":
            inputs[0] = (draw(st.sampled_from([*INPUT_NAMES, "x"])), ids)
        elif twist == "out-of-range" and ids.size:
            ids.flat[0] = draw(st.sampled_from([-1, 10**6, 2**63 - 1]))
        elif twist == "drop":
            inputs = inputs[1:] or inputs
        else:
            inputs[0] = (name, ids.T)
    return model, inputs


def _outputs() -> st.SearchStrategy[Any]:
    entry = st.fixed_dictionaries(
        {"name": st.sampled_from([*OUTPUT_NAMES, "x"]) | st.integers()},
        optional={
            "parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans() | st.integers()})
        },
    )
    return _mostly(None, st.lists(entry, max_size=3) | st.just({"name": "mask"}))


def _send(server: LiveServer, model: str, body: bytes, headers: dict[str, str]) -> Reply:
    return server.http.post(f"/v2/models/{model}/infer", content=body, headers=headers)


@st.composite
def _mangled(draw: st.DrawFn, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """The body as is, cut short, with bytes after it, or gzip-compressed (and then maybe broken)."""
    how = draw(_mostly("as-is", st.sampled_from(["cut", "pad", "gzip", "gzip", "gzip-pad", "gzip-cut"])))
    if how == "cut":
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))], headers
    if how == "pad":
        return body + draw(st.binary(min_size=1, max_size=16)), headers
    if how.startswith("gzip"):
        packed = gzip.compress(body)
        if how == "gzip-pad":
            packed += draw(st.binary(min_size=1, max_size=16))
        elif how == "gzip-cut":
            packed = packed[: draw(st.integers(0, len(packed) - 1))]
        return packed, {**headers, "Content-Encoding": "gzip"}
    return body, headers


def _check(reply: Reply) -> None:
    """No 5xx; an error is strict JSON with a message; a JSON answer is strict JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a response")

    assert reply.status_code < 500, reply.content[:500]
    length = int(reply.headers.get("inference-header-content-length", len(reply.content)))
    assert 0 < length <= len(reply.content)
    answer = json.loads(reply.content[:length], parse_constant=refuse)
    if reply.status_code >= 400:
        assert isinstance(answer["error"], str) and answer["error"]
    else:
        assert reply.status_code == 200 and isinstance(answer["outputs"], list)


def _warm_up(server: LiveServer) -> int:
    """Valid requests to every model, 3 times; the server's RSS after them."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        for model, rt in RUNTIMES.items():
            inputs = [
                {"name": i.name, "shape": [4, i.input_length or 8], "datatype": "INT64",
                 "data": rng.integers(1, i.input_dim or 1, (4, i.input_length or 8)).tolist()}
                for i in rt.inputs
            ]  # fmt: skip
            body = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
            assert _send(server, model, body, {}).status_code == 200
    return server.rss()


@FUZZ
@given(
    target=_model_and_inputs(),
    datatype=st.sampled_from(DATATYPES),
    junk_inputs=_mostly(None, st.lists(_junk_input, max_size=2)),
    outputs=_outputs(),
    binary_output=st.sampled_from([None, True, False, True, False, 1]),
    data=st.data(),
)
def _fuzz_json(
    server: LiveServer,
    target: tuple[str, list[tuple[str, np.ndarray]]],
    datatype: str,
    junk_inputs: list[dict[str, Any]] | None,
    outputs: Any,
    binary_output: Any,
    data: st.DataObject,
) -> None:
    model, inputs = target
    entries: list[Any] = [
        {"name": n, "shape": list(a.shape), "datatype": data.draw(_mostly("INT64", st.just(datatype))),
         "data": a.tolist() if data.draw(st.booleans()) else a.ravel().tolist()}
        for n, a in inputs
    ]  # fmt: skip
    request: dict[str, Any] = {"inputs": junk_inputs if junk_inputs is not None else entries}
    if outputs is not None:
        request["outputs"] = outputs
    if binary_output is not None:
        request["parameters"] = {"binary_data_output": binary_output}
    body, headers = data.draw(_mangled(json.dumps(request).encode(), {}))
    _check(_send(server, data.draw(_mostly(model, st.just("nope"))), body, headers))


@FUZZ
@given(target=_model_and_inputs(), outputs=_outputs(), data=st.data())
def _fuzz_binary(
    server: LiveServer, target: tuple[str, list[tuple[str, np.ndarray]]], outputs: Any, data: st.DataObject
) -> None:
    model, inputs = target
    blobs = [a.astype("<i8").tobytes() for _, a in inputs]
    entries = [
        {"name": n, "shape": list(a.shape), "datatype": "INT64",
         "parameters": {"binary_data_size": data.draw(_mostly(len(b), st.sampled_from([len(b) + 8, len(b) - 8, -1, 2**64])))}}
        for (n, a), b in zip(inputs, blobs)
    ]  # fmt: skip
    request: dict[str, Any] = {
        "inputs": entries,
        "parameters": {"binary_data_output": data.draw(st.booleans())},
    }
    if outputs is not None:
        request["outputs"] = outputs
    header = json.dumps(request).encode()
    raw = data.draw(_mostly(b"".join(blobs), st.binary(max_size=256)))
    length = data.draw(_mostly(len(header), st.sampled_from([len(header) - 1, len(header) + 1, 0, 10**12])))
    body, headers = data.draw(_mangled(header + raw, {"Inference-Header-Content-Length": str(length)}))
    _check(_send(server, model, body, headers))


def test_fuzzed_bodies_get_no_5xx_and_memory_stays_flat(live_server: LiveServer) -> None:
    """JSON bodies, then binary ones; then the server is up and its RSS within the margin of the warm-up's."""
    warm = _warm_up(live_server)
    _fuzz_json(live_server)
    _fuzz_binary(live_server)
    assert live_server.proc.poll() is None
    growth = (live_server.rss() - warm) / MiB
    assert growth < RSS_MARGIN_MIB, f"server RSS grew by {growth:.0f} MiB over the fuzz"
