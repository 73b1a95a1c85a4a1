"""Dynamic batching (``--max-batch-size``, ``--max-queue-delay-us``): each request gets exactly the answer
it gets alone, under concurrency, over REST and gRPC; the probe keeps batching off where it cannot."""

from __future__ import annotations

import argparse
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import embed_runtime
from embed_runtime import ConfigurationError, Runtime
from embed_runtime.serve import add_arguments, batching_from_args
from embed_runtime.serve import batcher as batcher_module
from embed_runtime.serve.batcher import AUTO, PROBE_ROWS, Batcher, BatchSettings
from embed_runtime.serve.limits import Limits
from embed_runtime.serve.metrics import ServeMetrics
from embed_runtime.serve.served import ServedModel

from .helpers import REPO_MODELS, SERVE_CLI, free_port, start_server, stop_server

CLIENTS = 24


def _load(name: str) -> Runtime:
    return embed_runtime.load(REPO_MODELS / name / "model.onnx", providers="cpu")


def _requests(count: int, input_dim: int, seed: int = 0) -> list[np.ndarray]:
    """Requests of 1 to 3 rows and lengths 5 or 9, some rows ending in padding (id 0) of differing
    lengths, so that one batch mixes rows padded differently."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(count):
        rows = rng.integers(1, input_dim, size=(1 + i % 3, 5 if i % 2 else 9))
        for row in rows:
            row[rng.integers(1, rows.shape[1] + 1) :] = 0
        requests.append(rows)
    return requests


class _CountingRuntime:
    """A runtime whose runs are counted (the batcher's runs of the model)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.inputs = runtime.inputs
        self.runs = 0
        self.lock = threading.Lock()

    def run(self, feeds: Any, outputs: Any = None) -> dict[str, np.ndarray]:
        with self.lock:
            self.runs += 1
        return self.runtime.run(feeds, outputs=outputs)


def _concurrently(fn: Any, items: list[Any]) -> list[Any]:
    barrier = threading.Barrier(len(items))

    def call(item: Any) -> Any:
        barrier.wait()
        return fn(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


@pytest.mark.parametrize(("model", "min_rows"), [("seed", 1), ("tagger", 2), ("recurrent", 2)])
def test_concurrent_requests_get_their_answer_alone(model: str, min_rows: int) -> None:
    runtime = _load(model)
    counting = _CountingRuntime(runtime)
    batcher = Batcher(model, counting, BatchSettings(max_batch_size=16, max_queue_delay_us=50_000))  # type: ignore[arg-type]
    batcher.probe()
    assert (batcher.enabled, batcher.min_rows) == (True, min_rows)
    name = runtime.inputs[0].name
    seq = 10 if model == "seed" else None
    requests = _requests(CLIENTS, runtime.inputs[0].input_dim or 2)
    if seq is not None:
        requests = [np.pad(r, ((0, 0), (0, seq - r.shape[1]))) for r in requests]
    counting.runs = 0
    batched = _concurrently(lambda ids: batcher.run({name: ids}, None), requests)
    assert counting.runs < len(requests) / 2  # they were batched
    for ids, got in zip(requests, batched, strict=True):
        alone = batcher.run({name: ids}, None)
        # alone through the batcher: on at least ``min_rows`` rows (its last row repeated)
        padded = np.concatenate([ids, np.repeat(ids[-1:], max(0, min_rows - len(ids)), axis=0)])
        reference = runtime.run(padded)
        for key, value in got.items():
            assert np.array_equal(value, alone[key])
            assert np.array_equal(value, reference[key][: len(ids)])


class _ClockedRuntime(_CountingRuntime):
    """The seed model's runs, each advancing a fake clock by ``fixed + per_row * rows`` seconds: the
    probe's timings without timing anything."""

    def __init__(self, runtime: Runtime, fixed: float, per_row: float) -> None:
        super().__init__(runtime)
        self.fixed, self.per_row, self.now = fixed, per_row, 0.0

    def clock(self) -> float:
        return self.now

    def run(self, feeds: Any, outputs: Any = None) -> dict[str, np.ndarray]:
        self.now += self.fixed + self.per_row * len(next(iter(feeds.values())))
        return super().run(feeds, outputs)


@pytest.mark.parametrize(
    ("fixed", "per_row", "pays", "saved_us"),
    [
        (1e-3, 10e-6, True, 1010 - 1080 / PROBE_ROWS),  # a recurrent model: the steps cost, not the rows
        (5e-6, 1e-6, False, 6 - 13 / PROBE_ROWS),  # a Gather: less than handing a request over costs
        (50e-6, 200e-6, False, 250 - 1650 / PROBE_ROWS),  # rows cost most: a batch saves little
    ],
)
def test_auto_batching_turns_on_where_it_pays(
    fixed: float,
    per_row: float,
    pays: bool,
    saved_us: float,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``--max-batch-size auto``: the probe times a batch of PROBE_ROWS rows against the rows one by one
    and batches only when that saves ``PAYS_S`` per request; a size given (not auto) batches anyway."""
    clocked = _ClockedRuntime(_load("seed"), fixed, per_row)
    monkeypatch.setattr(batcher_module, "perf_counter", clocked.clock)
    auto = Batcher("m", clocked, AUTO)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="embed_runtime.serve.batcher"):
        assert auto.probe()
    assert auto.enabled is pays
    assert f"a batch of {PROBE_ROWS} rows saves {saved_us:.0f} us of run time per request" in caplog.text
    assert ("dynamic batching on" if pays else "stays off: it does not pay") in caplog.text
    forced = Batcher("m", clocked, BatchSettings(AUTO.max_batch_size))  # type: ignore[arg-type]
    forced.probe()
    assert forced.enabled


def test_auto_batching_stays_off_when_timing_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows of the timing length the model refuses (here: ids out of range) leave batching off, saying so;
    the model is still warmed up and serves."""
    probe = batcher_module.probe_feeds

    def refused_when_timing(runtime: Runtime, length: int = batcher_module.PROBE_LENGTH) -> dict:
        feeds = probe(runtime, length)
        return {k: -v - 1 for k, v in feeds.items()} if length == batcher_module.TIMING_LENGTH else feeds

    monkeypatch.setattr(batcher_module, "probe_feeds", refused_when_timing)
    runtime = _load("seed")
    served = ServedModel("seed", runtime, Limits())
    served.batcher = Batcher("seed", runtime, AUTO)
    with caplog.at_level("INFO", logger="embed_runtime.serve.batcher"):
        served.warm_up()
    assert served.ready and not served.batcher.enabled
    assert "model 'seed': dynamic batching stays off: timing the probe failed: " in caplog.text


def test_requests_waiting_for_their_batch_give_their_slot_back() -> None:
    """With one inference slot, four requests each holding it while decoded still meet in one batch: each
    gives the slot back while it waits (without that, the first would wait out the whole delay alone)."""
    counting = _CountingRuntime(_load("seed"))
    batcher = Batcher("seed", counting, BatchSettings(max_batch_size=4, max_queue_delay_us=10_000_000))  # type: ignore[arg-type]
    batcher.probe()
    counting.runs = 0
    slot = threading.BoundedSemaphore(1)

    def request(ids: np.ndarray) -> dict[str, np.ndarray]:
        with slot:
            return batcher.run({"input_ids": ids}, None, slot)

    requests = [np.full((1, 10), i + 1) for i in range(4)]
    results = _concurrently(request, requests)
    assert counting.runs == 1
    for ids, got in zip(requests, results, strict=True):
        assert np.array_equal(got["embedding"], counting.runtime.run(ids)["embedding"])
    assert slot.acquire(blocking=False)  # every request gave it back in the end


@pytest.mark.parametrize("settings", [AUTO, BatchSettings(8)], ids=["auto", "forced"])
@pytest.mark.parametrize("model", ["seed", "tagger"])
def test_a_request_of_no_rows_gets_the_empty_answer(model: str, settings: BatchSettings) -> None:
    """A request of 0 rows (the limits admit it) gets the runtime's empty outputs whether batching is on
    (tagger, or forced) or off (seed under auto), as without a batcher."""
    runtime = _load(model)
    served = ServedModel(model, runtime, Limits())
    served.batcher = Batcher(model, runtime, settings, Limits().max_ids)
    served.warm_up()
    spec = runtime.inputs[0]
    empty = {spec.name: np.zeros((0, spec.shape[1] or 5), np.int64)}
    got = served.execute(empty, [(name, True) for name in served.output_names], ServeMetrics())
    for (name, array, _), want in zip(got, runtime.run(empty).values(), strict=True):
        assert array.shape == want.shape and array.shape[0] == 0, name


class _SizedRuntime(_CountingRuntime):
    """Records the ids of each run."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.sizes: list[int] = []

    def run(self, feeds: Any, outputs: Any = None) -> dict[str, np.ndarray]:
        self.sizes.append(sum(np.asarray(v).size for v in feeds.values()))
        return super().run(feeds, outputs)


@pytest.mark.parametrize(("model", "length"), [("seed", 10), ("tagger", 20)])
def test_a_batch_holds_no_more_ids_than_one_request_may(model: str, length: int) -> None:
    """With --max-ids 3 rows' worth, eight concurrent one-row requests run in batches of at most that many
    ids (a lone request of the tagger, which runs on two rows, on 2 x 20 ids), so a batch's run is never
    larger than one request's may be (the memory bound in docs/serve.md counts one such run)."""
    sized = _SizedRuntime(_load(model))
    name = sized.inputs[0].name
    batcher = Batcher(model, sized, BatchSettings(max_batch_size=32, max_queue_delay_us=200_000), 3 * length)  # type: ignore[arg-type]
    batcher.probe()
    sized.sizes.clear()
    requests = [np.full((1, length), i + 1) for i in range(8)]
    results = _concurrently(lambda ids: batcher.run({name: ids}, None), requests)
    assert max(sized.sizes) <= 3 * length and len(sized.sizes) >= 3
    for ids, got in zip(requests, results, strict=True):
        alone = batcher.run({name: ids}, None)
        assert all(np.array_equal(got[k], alone[k]) for k in alone)


@pytest.mark.parametrize(("model", "settings"), [("recommender", BatchSettings(8)), ("shared", AUTO)])
def test_requests_whose_inputs_differ_in_rows_are_refused_as_sent(
    model: str, settings: BatchSettings
) -> None:
    """Two requests each refused alone (one input of 1 row, the other of 2; and the other way round) are
    not merged into one valid batch: each gets the runtime's own error, naming the rows it sent."""
    runtime = _load(model)
    served = ServedModel(model, runtime, Limits())
    served.batcher = Batcher(model, runtime, BatchSettings(8, 200_000, settings.when_it_pays))
    served.warm_up()
    first, second = (spec.name for spec in runtime.inputs)
    length = runtime.inputs[0].shape[1] or 4
    a = {first: np.ones((1, length), np.int64), second: np.ones((2, length), np.int64)}
    b = {first: np.ones((2, length), np.int64), second: np.ones((1, length), np.int64)}
    selected = [(name, True) for name in served.output_names]

    def outcome(feeds: dict[str, np.ndarray]) -> Any:
        try:
            return served.execute(feeds, selected, ServeMetrics())
        except Exception as exc:
            return exc

    for feeds, got in zip((a, b), _concurrently(outcome, [a, b]), strict=True):
        assert isinstance(got, embed_runtime.InvalidInputError), got
        rows = sorted(f"has {len(v)}" for v in feeds.values())
        assert all(text in str(got) for text in rows), str(got)


def test_a_bad_request_fails_alone_in_its_batch() -> None:
    runtime = _load("tagger")
    batcher = Batcher("tagger", runtime, BatchSettings(max_batch_size=8, max_queue_delay_us=50_000))
    batcher.probe()
    good = _requests(5, runtime.inputs[0].input_dim or 2)
    good = [g[:, :5] for g in good]
    bad = np.full((1, 5), runtime.inputs[0].input_dim or 0)
    outcomes = _concurrently(lambda ids: _outcome(batcher, ids), [*good, bad])
    assert isinstance(outcomes[-1], embed_runtime.InvalidInputError)
    for ids, got in zip(good, outcomes[:-1], strict=True):
        assert np.array_equal(got["tags"], batcher.run({"token_ids": ids}, None)["tags"])


def _outcome(batcher: Batcher, ids: np.ndarray) -> Any:
    try:
        return batcher.run({"token_ids": ids}, None)
    except Exception as exc:
        return exc


def test_probe_keeps_batching_off_where_rows_mix(
    model_paths: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """``fragile`` reshapes its output across rows: a batch cannot be split back."""
    runtime = embed_runtime.load(model_paths["fragile"], providers="cpu")
    batcher = Batcher("fragile", runtime, BatchSettings(max_batch_size=8))
    with caplog.at_level("WARNING", logger="embed_runtime.serve.batcher"):
        batcher.probe()
    assert not batcher.enabled
    assert "model 'fragile': dynamic batching stays off" in caplog.text


def _counted(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ``runtime.run`` calls (the list's one item)."""
    runs, run = [0], runtime.run

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(runtime, "run", counting)
    return runs


@pytest.mark.parametrize(("model", "runs"), [("seed", 1 + PROBE_ROWS), ("tagger", 1 + 2 * PROBE_ROWS)])
def test_the_probe_is_the_warm_up(model: str, runs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With batching the model's warm-up is the probe's batch: no extra run (seed: one batch and its
    rows alone; tagger: the rows alone again on two rows)."""
    runtime = _load(model)
    counted = _counted(runtime, monkeypatch)
    served = ServedModel(model, runtime, Limits())
    served.batcher = Batcher(model, runtime, BatchSettings(max_batch_size=8))
    served.warm_up()
    assert served.ready and served.batcher.enabled
    assert counted[0] == runs


def test_a_ready_model_is_not_probed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app started a second time does not warm its ready models up again: the batching decision that
    requests were served with stays (a second timing could decide otherwise)."""
    runtime = _load("tagger")
    counted = _counted(runtime, monkeypatch)
    served = ServedModel("tagger", runtime, Limits())
    served.batcher = Batcher("tagger", runtime, AUTO)
    served.warm_up()
    runs, enabled = counted[0], served.batcher.enabled
    served.warm_up()
    assert counted[0] == runs and served.batcher.enabled is enabled and served.ready


def test_a_failing_probe_falls_back_to_the_warm_up(
    model_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe batch that fails leaves batching off and the one-row warm-up runs after it."""
    runtime = _load("seed")
    counted = _counted(runtime, monkeypatch)
    served = ServedModel("seed", runtime, Limits())
    served.batcher = Batcher("seed", runtime, BatchSettings(max_batch_size=8))
    monkeypatch.setattr(batcher_module, "probe_feeds", lambda rt: {"input_ids": np.full((8, 10), -1)})
    served.warm_up()
    assert served.ready and not served.batcher.enabled
    assert counted[0] == 2  # the probe's batch (refused: negative ids), then the warm-up


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["m.onnx", *argv])


def test_batching_options() -> None:
    assert batching_from_args(_parse([])) == (AUTO, {})
    args = _parse(
        ["--max-batch-size", "8", "--max-batch-size", "tagger=32", "--max-queue-delay-us", "seed=500"]
    )
    assert batching_from_args(args) == (
        BatchSettings(8, 0),
        {"tagger": BatchSettings(32, 0), "seed": BatchSettings(8, 500)},
    )
    args = _parse(
        ["--max-batch-size", "off", "--max-batch-size", "tagger=auto", "--max-queue-delay-us", "tagger=9"]
    )
    assert batching_from_args(args) == (
        None,
        {"tagger": BatchSettings(AUTO.max_batch_size, 9, when_it_pays=True)},
    )
    args = _parse(["--max-batch-size", "off", "--max-batch-size", "seed=4", "--max-queue-delay-us", "0"])
    assert batching_from_args(args) == (None, {"seed": BatchSettings(4, 0)})  # a delay for those that batch
    args = _parse(["--max-batch-size", "seed=off", "--max-queue-delay-us", "300"])
    assert batching_from_args(args) == (
        BatchSettings(AUTO.max_batch_size, 300, when_it_pays=True),
        {"seed": None},
    )


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (
            ["--max-batch-size", "off", "--max-queue-delay-us", "100"],
            "--max-queue-delay-us is given for every model, whose batching is off (--max-batch-size off)",
        ),
        (
            ["--max-batch-size", "b=off", "--max-queue-delay-us", "b=100"],
            "--max-queue-delay-us is given for model 'b', whose batching is off (--max-batch-size b=off)",
        ),
        (
            ["--max-batch-size", "off", "--max-queue-delay-us", "b=100"],
            "--max-queue-delay-us is given for model 'b', whose batching is off (--max-batch-size off)",
        ),
        (
            ["--max-batch-size", "4", "--max-batch-size", "4"],
            "--max-batch-size is given twice for every model",
        ),
    ],
)
def test_bad_batching_options_are_refused(argv: list[str], text: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(text)):
        batching_from_args(_parse(argv))


def test_a_delay_over_a_minute_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """(Event.wait overflows on absurd delays: refused at the command line, not as 500s later.)"""
    assert batching_from_args(_parse(["--max-queue-delay-us", "60000000"]))[0] is not None
    with pytest.raises(SystemExit):
        _parse(["--max-queue-delay-us", "60000001"])
    assert "--max-queue-delay-us: 60000001 is over 60,000,000" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1", "-3", "many", "Auto", "seed=0", "seed="])
def test_batch_sizes_that_are_not_sizes_are_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each names the value and what the option takes (one row per run never batches)."""
    with pytest.raises(SystemExit):
        _parse(["--max-batch-size", value])
    err = capsys.readouterr().err
    assert "--max-batch-size takes a number of rows (one row never batches), auto or off" in err


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(REST, gRPC)`` of ``embed-runtime serve`` with the seed and tagger models, batching on."""
    grpc_port = free_port()
    args = [str(REPO_MODELS / name / "model.onnx") for name in ("seed", "tagger")]
    args += ["--grpc-port", str(grpc_port), "--max-concurrency", str(CLIENTS), "--providers", "cpu"]
    args += ["--max-batch-size", "16", "--max-queue-delay-us", "20000", "--no-access-log"]
    log = tmp_path_factory.mktemp("batching") / "server.log"
    proc, rest = start_server(args, log, SERVE_CLI)
    yield rest, f"127.0.0.1:{grpc_port}"
    assert stop_server(proc) in (0, -15)
    assert "model 'tagger': dynamic batching on" in log.read_text()


def _rest(url: str, ids: np.ndarray) -> np.ndarray:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("token_ids", list(ids.shape), "INT64")
        tensor.set_data_from_numpy(ids.astype(np.int64), binary_data=True)
        return client.infer("tagger", [tensor]).as_numpy("tags")


def _grpc(url: str, ids: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("token_ids", list(ids.shape), "INT64")
        tensor.set_data_from_numpy(ids.astype(np.int64))
        return client.infer("tagger", [tensor]).as_numpy("tags")


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_served_concurrently_equals_served_alone(urls: tuple[str, str], protocol: str) -> None:
    url = urls[0] if protocol == "rest" else urls[1]
    call = _rest if protocol == "rest" else _grpc
    requests = _requests(CLIENTS, 20, seed=1)
    batched = _concurrently(lambda ids: call(url, ids), requests)
    for ids, got in zip(requests, batched, strict=True):
        assert np.array_equal(got, call(url, ids))


def test_batching_for_a_model_not_served_names_the_options() -> None:
    """`--max-queue-delay-us zzz=5` for no model `zzz`: the error says which options named it."""
    from embed_runtime.serve import ServeConfig, create_app

    with pytest.raises(ConfigurationError, match=re.escape(
        "batching (--max-batch-size, --max-queue-delay-us) is given for model(s) 'zzz', which are not served"
    )):  # fmt: skip
        create_app({"seed": _load("seed")}, ServeConfig(model_batching={"zzz": AUTO}))
