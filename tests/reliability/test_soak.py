"""A bounded soak of one live loopback server of six committed models (issue 16, "Keep it that way").

:data:`CLIENTS` client threads, each on one keep-alive ``http.client`` connection, send a mix of valid and
invalid inference requests: JSON and binary-extension bodies, some gzip-compressed, outputs as JSON or
binary, all or some of them; ids out of range, negative ids, a wrong length or rank, data that does not
match its shape, unknown models, inputs or outputs, a missing input, bad JSON, a batch over the limit.
Every request is built, and every valid one's answer computed with ``embed_runtime.load(path).run``, in
this process before the soak starts. Then:

* every 200 equals that answer (exactly for bools, within :data:`FLOAT_TOLERANCE` for floats);
* every invalid request gets the 4xx that docs/serve.md gives for its case, with an ``{"error": ...}``;
* no request gets a 5xx or another status, and the server stays up;
* after a warm-up, the server's resident memory (sampled with psutil) stays within :data:`RSS_GROWTH` of
  what it was after the warm-up, until the end.

The soak is bounded: :data:`REQUESTS` requests after the warm-up (``EMBED_SOAK_REQUESTS``), or
:data:`SECONDS` seconds (``EMBED_SOAK_SECONDS``), whichever comes first. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

for _module in ("starlette", "uvicorn", "prometheus_client", "psutil"):
    pytest.importorskip(_module)

from embed_runtime import Runtime, load  # noqa: E402
from tests.reliability.live import MODELS, LiveServer, MiB  # noqa: E402
from tests.serve.helpers import REPO_MODELS, start_server, stop_server  # noqa: E402

SOAK_MODELS = (*MODELS, "shared")
"""The committed models the soak's server serves, all at once."""

REQUESTS = int(os.environ.get("EMBED_SOAK_REQUESTS", "50000"))
"""Requests after the warm-up."""

SECONDS = float(os.environ.get("EMBED_SOAK_SECONDS", "75"))
"""The soak stops after this many seconds even if it has not sent :data:`REQUESTS` requests."""

WARM_UP = 3000
"""Requests of the same mix before the server's memory is taken as the reference."""

CLIENTS = 4
RSS_GROWTH = 0.10
FLOAT_TOLERANCE = 1e-6
VALID_PER_MODEL = 48
MAX_BATCH = 4096
"""The server's default ``--max-batch`` (docs/serve.md)."""

DTYPES = {"FP32": np.float32, "BOOL": np.bool_, "INT64": np.int64}
"""The numpy dtype of each V2 datatype the committed models return."""

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One request, and what must come back: ``expected`` outputs for a 200, else the status."""

    kind: str
    model: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    expected: dict[str, np.ndarray] | None = None


def _ids(rng: np.random.Generator, dim: int, rows: int, length: int) -> np.ndarray:
    """Ids in ``[0, dim)`` whose rows start with a non-padding id, so that no row is padding only (the
    classifier's probability of such a row is NaN, which JSON cannot carry)."""
    ids = rng.integers(0, dim, (rows, length))
    ids[:, :1] = rng.integers(1, dim, (rows, min(length, 1)))
    return ids


def _feeds(rt: Runtime, rng: np.random.Generator) -> Feeds:
    """Valid inputs of a drawn batch (1 to 8 rows) and lengths (1 to 12 where the model leaves them open)."""
    rows = int(rng.integers(1, 9))
    return {
        i.name: _ids(rng, i.input_dim or 1, rows, i.input_length or int(rng.integers(1, 13)))
        for i in rt.inputs
    }


def _json_input(name: str, ids: np.ndarray, shape: list[int] | None = None, nested: bool = True) -> Any:
    data = ids.tolist() if nested else ids.ravel().tolist()
    return {
        "name": name,
        "shape": list(ids.shape) if shape is None else shape,
        "datatype": "INT64",
        "data": data,
    }


def _request(inputs: list[Any], outputs: list[str] | None, binary_output: bool) -> dict[str, Any]:
    request: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": binary_output}}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


def _json_body(feeds: Feeds, outputs: list[str] | None, binary_output: bool, nested: bool) -> bytes:
    inputs = [_json_input(name, ids, nested=nested) for name, ids in feeds.items()]
    return json.dumps(_request(inputs, outputs, binary_output)).encode()


def _binary_body(
    feeds: Feeds, outputs: list[str] | None, binary_output: bool, sizes: dict[str, int] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: ``sizes`` gives other ``binary_data_size`` values than the data's."""
    blobs = {name: ids.astype("<i8").tobytes() for name, ids in feeds.items()}
    inputs = [
        {"name": name, "shape": list(ids.shape), "datatype": "INT64",
         "parameters": {"binary_data_size": (sizes or {}).get(name, len(blobs[name]))}}
        for name, ids in feeds.items()
    ]  # fmt: skip
    header = json.dumps(_request(inputs, outputs, binary_output)).encode()
    return header + b"".join(blobs.values()), {"Inference-Header-Content-Length": str(len(header))}


def _valid(model: str, rt: Runtime, rng: np.random.Generator) -> Case:
    """A valid request: JSON or binary inputs, JSON or binary outputs, all outputs or some, maybe gzip."""
    feeds = _feeds(rt, rng)
    names = [o.name for o in rt.outputs]
    outputs = (
        None
        if rng.random() < 0.5
        else [str(n) for n in rng.permutation(names)[: rng.integers(1, len(names) + 1)]]
    )
    binary_output = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        body, headers, kind = *_binary_body(feeds, outputs, binary_output), "valid binary"
    else:
        body, headers, kind = (
            _json_body(feeds, outputs, binary_output, bool(rng.random() < 0.5)),
            {},
            "valid json",
        )
    if rng.random() < 0.2:
        body, headers, kind = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}, f"{kind} gzip"
    expected = {name: np.array(a) for name, a in rt.run(feeds, outputs=outputs).items()}
    return Case(kind, model, body, headers, 200, expected)


def _with_id(feeds: Feeds, value: int, rng: np.random.Generator) -> Feeds:
    """The feeds with one id of the first input replaced by ``value``."""
    name, ids = next(iter(feeds.items()))
    bad = ids.copy()
    bad[rng.integers(bad.shape[0]), rng.integers(bad.shape[1])] = value
    return {**feeds, name: bad}


def _invalid(model: str, rt: Runtime, rng: np.random.Generator) -> list[Case]:
    """One request of each invalid kind for this model, with the status docs/serve.md gives for it."""
    feeds = _feeds(rt, rng)
    first = rt.inputs[0]
    name, ids = next(iter(feeds.items()))
    rest = [_json_input(n, a) for n, a in list(feeds.items())[1:]]

    def first_as(entry: dict[str, Any], binary_output: bool = False) -> bytes:
        return json.dumps(_request([entry, *rest], None, binary_output)).encode()

    plain = _json_body(feeds, None, False, True)
    cases = [
        Case("id out of range", model, _json_body(_with_id(feeds, first.input_dim or 1, rng), None, False, True),
             status=400),
        Case("negative id", model, *_binary_body(_with_id(feeds, -1, rng), None, True), status=400),
        Case("shape does not match data", model,
             first_as(_json_input(name, ids, [ids.shape[0], ids.shape[1] + 1])), status=400),
        Case("binary size does not match shape", model,
             *_binary_body(feeds, None, True, {name: ids.size * 8 - 8}), status=400),
        Case("wrong rank", model, first_as(_json_input(name, ids.ravel())), status=400),
        Case("unknown model", "no-such-model", plain, status=404),
        Case("unknown input", model, first_as({**_json_input(name, ids), "name": "no_such_input"}), status=400),
        Case("unknown output", model, _json_body(feeds, ["no_such_output"], True, True), status=400),
        Case("bad json", model, plain[:-7], status=400),
        Case("bad gzip", model, gzip.compress(plain)[:-9], {"Content-Encoding": "gzip"}, status=400),
        Case("batch over --max-batch", model,
             first_as(_json_input(name, ids[:0], [MAX_BATCH + 1, ids.shape[1]]), True), status=413),
    ]  # fmt: skip
    if first.input_length is not None:
        longer = {**feeds, name: _ids(rng, first.input_dim or 1, ids.shape[0], first.input_length + 1)}
        cases.append(Case("wrong length", model, _json_body(longer, None, False, False), status=400))
    if rest:
        cases.append(
            Case("missing input", model, json.dumps(_request(rest, None, True)).encode(), status=400)
        )
    return cases


def _cases(runtimes: dict[str, Runtime]) -> tuple[list[Case], list[Case]]:
    """Valid and invalid requests to every model, from a fixed seed."""
    rng = np.random.default_rng(16)
    valid = [_valid(m, rt, rng) for m, rt in runtimes.items() for _ in range(VALID_PER_MODEL)]
    invalid = [c for m, rt in runtimes.items() for _ in range(3) for c in _invalid(m, rt, rng)]
    return valid, invalid


def _decode(headers: dict[str, str], content: bytes) -> dict[str, np.ndarray]:
    """The outputs of a 200: JSON ``data`` or the binary blocks after the JSON header, in order."""
    length = int(headers.get("inference-header-content-length", len(content)))
    offset, outputs = length, {}
    for out in json.loads(content[:length])["outputs"]:
        dtype = np.dtype(DTYPES[out["datatype"]])
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            outputs[out["name"]] = np.array(out["data"], dtype).reshape(out["shape"])
        else:
            block = np.frombuffer(content, dtype, size // dtype.itemsize, offset)
            outputs[out["name"]] = block.reshape(out["shape"])
            offset += size
    assert offset == len(content), f"{len(content) - offset} bytes after the last output"
    return outputs


def _problem(case: Case, status: int, headers: dict[str, str], content: bytes) -> str | None:
    """What is wrong with this answer to ``case``, or None."""
    if status != case.status:
        return f"{case.kind} to {case.model}: status {status}, expected {case.status}: {content[:300]!r}"
    if case.expected is None:
        error = json.loads(content).get("error")
        return (
            None if isinstance(error, str) and error else f"{case.kind}: no error message: {content[:300]!r}"
        )
    got = _decode(headers, content)
    if got.keys() != case.expected.keys():
        return f"{case.kind} to {case.model}: outputs {sorted(got)}, expected {sorted(case.expected)}"
    for name, want in case.expected.items():
        answer = got[name]
        if answer.shape != want.shape or answer.dtype != want.dtype:
            return f"{case.kind} to {case.model}: {name} is {answer.dtype}{answer.shape}, not {want.dtype}{want.shape}"
        if want.dtype.kind == "f":
            worst = float(np.max(np.abs(answer - want), initial=0.0))
            if not worst <= FLOAT_TOLERANCE:
                return f"{case.kind} to {case.model}: {name} differs from Runtime.run by {worst:g}"
        elif not np.array_equal(answer, want):
            return f"{case.kind} to {case.model}: {name} differs from Runtime.run"
    return None


@dataclass
class Tally:
    """What the clients saw: requests by kind and status, and the first problems."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, problem: str | None) -> None:
        with self.lock:
            self.statuses[kind, status] += 1
            if problem is not None and len(self.problems) < 20:
                self.problems.append(problem)


def _client(url: str, cases: list[Case], count: int, seed: int, deadline: float, tally: Tally) -> None:
    """Send ``count`` requests drawn from ``cases`` on one keep-alive connection (reopened only when the
    server closes it), until ``deadline``, 20 problems, or a request that gets no answer."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    order = np.random.default_rng(seed).integers(0, len(cases), count)
    try:
        for index in order:
            if time.monotonic() > deadline or len(tally.problems) >= 20:
                return
            case = cases[index]
            try:
                conn.request("POST", f"/v2/models/{case.model}/infer", case.body, case.headers)
                response = conn.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as error:
                tally.add(case.kind, 0, f"{case.kind} to {case.model}: no answer: {error!r}")
                return
            headers = {k.lower(): v for k, v in response.getheaders()}
            try:
                problem = _problem(case, response.status, headers, content)
            except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as error:
                problem = f"{case.kind} to {case.model}: unreadable answer ({error}): {content[:300]!r}"
            tally.add(case.kind, response.status, problem)
    finally:
        conn.close()


def _run(
    url: str, cases: list[Case], count: int, seed: int, seconds: float, watch: Callable[[], None]
) -> Tally:
    """``count`` requests from :data:`CLIENTS` threads at once, calling ``watch`` while they run."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(url, cases, count // CLIENTS, seed + i, deadline, tally))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        watch()
        time.sleep(0.25)
    return tally


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of :data:`SOAK_MODELS` with the default limits and no access log."""
    log = tmp_path_factory.mktemp("soak") / "server.log"
    paths = [str(REPO_MODELS / name / "model.onnx") for name in SOAK_MODELS]
    proc, url = start_server([*paths, "--providers", "cpu", "--no-access-log"], log)
    try:
        yield LiveServer(proc, url, log)
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_soak_answers_equal_the_runtime_and_memory_stays_flat(soak_server: LiveServer) -> None:
    runtimes = {m: load(REPO_MODELS / m / "model.onnx", providers="cpu") for m in SOAK_MODELS}
    valid, invalid = _cases(runtimes)
    cases = valid * 3 + invalid  # about 80 % valid
    url = f"{soak_server.http.host}:{soak_server.http.port}"
    start_rss = soak_server.rss()
    warm = _run(url, cases, WARM_UP, 0, SECONDS, lambda: None)
    assert not warm.problems, "\n".join(warm.problems)
    warm_rss = soak_server.rss()
    samples = [warm_rss]
    began = time.perf_counter()
    tally = _run(url, cases, REQUESTS, 100, SECONDS, lambda: samples.append(soak_server.rss()))
    seconds = time.perf_counter() - began
    samples.append(soak_server.rss())

    sent = sum(tally.statuses.values())
    by_status = Counter[int]()
    for (_, status), n in tally.statuses.items():
        by_status[status] += n
    valid_answers = sum(n for (kind, _), n in tally.statuses.items() if kind.startswith("valid"))
    print(
        f"\nsoak: {sent:,} requests ({valid_answers:,} valid) in {seconds:.1f} s, {sent / seconds:,.0f} req/s, "
        f"{CLIENTS} clients, {len(SOAK_MODELS)} models; by status {dict(sorted(by_status.items()))}; "
        f"server RSS {start_rss / MiB:.1f} MiB at start, {warm_rss / MiB:.1f} after {WARM_UP:,} warm-up requests, "
        f"max {max(samples) / MiB:.1f}, end {samples[-1] / MiB:.1f}"
    )
    assert not tally.problems, "\n".join(tally.problems)
    assert soak_server.proc.poll() is None, f"the server died:\n{soak_server.log.read_text()}"
    assert not any(status >= 500 for status in by_status)
    assert sent >= min(REQUESTS // CLIENTS * CLIENTS, 5000), f"only {sent} requests in {SECONDS} s"
    growth = max(samples) / warm_rss - 1
    assert growth <= RSS_GROWTH, f"server RSS grew {growth:.1%} over the soak (samples in MiB: {samples})"
