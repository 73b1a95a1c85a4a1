"""Dynamic batching of one served model (``--max-batch-size``, ``--max-queue-delay-us``).

Requests whose inputs have the same shape past the batch axis (and the same dtypes and selected outputs)
are concatenated along axis 0, run as one inference and split back. It works in the worker threads the
server already runs requests in, so REST and gRPC requests batch alike: the first request of a batch
(its leader) waits up to ``max_queue_delay_us`` for the batch to fill to ``max_batch_size`` rows, then
for the model to be free (one batch runs at a time per model); requests arriving meanwhile join the
batch. The others wait for the leader to hand them their rows. A batch that fails is run again request
by request, so that each request gets its own result or error.

Each request must get exactly the answer it gets alone. Gather-only models do at any batch size; models
with MatMul/LSTM layers do not: onnxruntime's one-row kernels round differently (by about 1e-7) from its
many-row ones, while the rows of any batch of two or more agree. :meth:`Batcher.probe` (run at warm-up)
checks which holds: rows of a batch equal to their one-row runs (batching as is), else equal to runs on
two rows (then every request, alone or not, runs on at least two rows, its own row repeated: its answer
never depends on what it was batched with), else batching stays off for the model, with a warning (at
INFO under ``--max-batch-size auto``, where nobody asked for batching).
Requests are only batched with requests of the same sequence length: padding to a shared length is not
done (a model whose outputs read the padded positions would answer differently).

Batching pays where a model's run costs much more than the rows it runs: a recurrent model's `Loop` runs
its steps once per batch, so 8 rows cost about what one row does; a Gather-only model's run takes a few
microseconds, less than handing a request to a batch costs. With :attr:`BatchSettings.when_it_pays`
(``--max-batch-size auto``, the default) the probe also times the model: batching turns on only when
running :data:`PROBE_ROWS` rows of :data:`TIMING_LENGTH` ids as one batch saves at least :data:`PAYS_S` of
run time per request over running them one by one.

A request waiting for its batch (to fill, for the model, or for the batch's leader to run it) gives its
inference slot (``--max-concurrency``) back for the wait, so that other requests are decoded and join the
batch meanwhile; it takes a slot again to run the batch or to encode its answer.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from embed_runtime import Runtime

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Results = dict[str, np.ndarray]

PROBE_ROWS = 8
"""Rows of the batch :meth:`Batcher.probe` compares with their runs alone."""

PROBE_LENGTH = 8
"""Length given to the dynamic axes other than the batch in the probe."""

TIMING_LENGTH = 32
"""Length given to the dynamic axes other than the batch where the probe times the model (a sequence
about as long as users send: a recurrent model's run grows with it, the cost of a request does not)."""

PAYS_S = 100e-6
"""Run time a batch of :data:`PROBE_ROWS` rows must save per request, over running them one by one, for
batching to turn on where :attr:`BatchSettings.when_it_pays` (more than handing a request to a batch
costs, about 70 us here)."""

AUTO_ROWS = 32
"""Most rows per batch where the probe turns batching on (``--max-batch-size auto``)."""


@dataclass(frozen=True)
class BatchSettings:
    """Dynamic batching of one model: at most ``max_batch_size`` rows per inference, how long the first
    request of a batch waits for others (microseconds; 0: only those that arrive while the model runs the
    previous batch), and whether to batch only where the probe finds it pays (:data:`PAYS_S`)."""

    max_batch_size: int
    max_queue_delay_us: int = 0
    when_it_pays: bool = False


AUTO = BatchSettings(AUTO_ROWS, when_it_pays=True)
"""``--max-batch-size auto``, the default: up to :data:`AUTO_ROWS` rows, no delay, where it pays."""


@dataclass
class _Batch:
    feeds: list[Feeds] = field(default_factory=list)
    rows: int = 0
    ids: int = 0
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Results | Exception] = field(default_factory=list)


def _rows(feeds: Feeds) -> int | None:
    """The rows (axis 0) every input of ``feeds`` has; ``None`` when they differ (the runtime refuses it)."""
    rows = {len(a) for a in feeds.values()}
    return rows.pop() if len(rows) == 1 else None


def probe_feeds(runtime: Runtime, length: int = PROBE_LENGTH) -> dict[str, np.ndarray]:
    """:data:`PROBE_ROWS` random rows per input, ``length`` long where the graph does not fix it: valid ids
    for id inputs, normal floats, tokens of the vocabulary for string inputs, else zeros."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in runtime.inputs:
        shape = [PROBE_ROWS if i == 0 else length if d is None else d for i, d in enumerate(spec.shape)]
        values: np.ndarray
        if spec.dtype.kind in "iu":
            values = rng.integers(0, spec.input_dim or 2, shape)
        elif spec.dtype.kind == "f":
            values = rng.standard_normal(shape)
        elif spec.dtype == object and runtime.text is not None and spec.name in runtime.text.tokenizers:
            # a string input whose lookup is in the graph: tokens of its vocabulary
            values = rng.choice(np.array(runtime.text.tokenizers[spec.name].spec.vocabulary, object), shape)
        else:
            values = np.zeros(shape)
        feeds[spec.name] = values.astype(spec.dtype)
    return feeds


@contextmanager
def _released(slot: threading.Semaphore | None) -> Iterator[None]:
    """Give ``slot`` (held by the caller) back for the block, then take it again."""
    if slot is None:
        yield
        return
    slot.release()
    try:
        yield
    finally:
        slot.acquire()


def _key(feeds: Feeds, names: Sequence[str] | None) -> tuple[object, ...]:
    shapes = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
    return shapes, None if names is None else tuple(names)


class Batcher:
    """The batches of one model's :class:`Runtime`; :meth:`run` is called from many threads at once."""

    def __init__(
        self, name: str, runtime: Runtime, settings: BatchSettings, max_ids: int | None = None
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.max_rows = settings.max_batch_size
        self.max_ids = sys.maxsize if max_ids is None else max_ids
        """Most elements of all inputs in one batch (the model's ``--max-ids``, which bounds one request),
        so that a batch's run is never larger than one request's may be (but for a one-row request of a model
        that runs on two rows: twice that); no bound when not given."""
        self.delay = settings.max_queue_delay_us / 1e6
        self.when_it_pays = settings.when_it_pays
        self.enabled = False
        self.min_rows = 1
        self._lock = threading.Lock()
        self._model = threading.Lock()
        self._open: dict[tuple[object, ...], _Batch] = {}

    def probe(self) -> bool:
        """Decide, on :func:`probe_feeds`, whether and how batching keeps every answer exact (see the
        module docstring) and, where :attr:`BatchSettings.when_it_pays`, whether it pays; log the decision.
        Returns whether the model ran the probe's batch (then the probe was the model's warm-up inference;
        else batching stays off and the caller warms it up)."""
        feeds = probe_feeds(self.runtime)
        rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(PROBE_ROWS)]
        try:
            batch = self.runtime.run(feeds)
        except Exception as exc:
            self._stays_off(f"the probe batch failed: {exc}")
            return False
        reason = "a batch's rows differ from the same rows run alone"
        try:
            for min_rows in (1, 2):
                alone = [self._run(row, None, min_rows) for row in rows]
                if all(np.array_equal(batch[k][i : i + 1], a[k]) for i, a in enumerate(alone) for k in a):
                    self._decide(min_rows)
                    return True
        except Exception as exc:
            reason = f"a probe row failed alone: {exc}"
        self._stays_off(reason)
        return True

    def _stays_off(self, reason: str) -> None:
        """Log why batching stays off: a warning where it was asked for, information under ``auto``."""
        level = logging.INFO if self.when_it_pays else logging.WARNING
        logger.log(level, "model %r: dynamic batching stays off: %s", self.name, reason)

    def _decide(self, min_rows: int) -> None:
        """Turn batching on (runs on at least ``min_rows`` rows) unless it must pay and does not: unless a
        batch of :data:`PROBE_ROWS` rows of :data:`TIMING_LENGTH` saves under :data:`PAYS_S` of run time
        per request over running them one by one (the best of a few runs of each)."""
        gain = ""
        if self.when_it_pays:
            feeds = probe_feeds(self.runtime, TIMING_LENGTH)
            one = {k: v[:1] for k, v in feeds.items()}
            try:
                alone = min(self._seconds(one, min_rows) for _ in range(3))
                saved = alone - min(self._seconds(feeds, 1) for _ in range(2)) / PROBE_ROWS
            except Exception as exc:
                self._stays_off(f"timing the probe failed: {exc}")
                return
            gain = f"a batch of {PROBE_ROWS} rows saves {saved * 1e6:.0f} us of run time per request"
            if saved < PAYS_S:
                self._stays_off(
                    f"it does not pay ({gain}, under {PAYS_S * 1e6:.0f} us; --max-batch-size N turns it on)"
                )
                return
            gain = "; " + gain
        self.enabled, self.min_rows = True, min_rows
        logger.info(
            "model %r: dynamic batching on (up to %d rows, %d us delay, >= %d rows per run%s)",
            self.name, self.max_rows, int(self.delay * 1e6), min_rows, gain,
        )  # fmt: skip

    def _seconds(self, feeds: Feeds, min_rows: int) -> float:
        start = perf_counter()
        self._run(feeds, None, min_rows)
        return perf_counter() - start

    def run(
        self, feeds: Feeds, names: Sequence[str] | None, slot: threading.Semaphore | None = None
    ) -> Results:
        """The outputs ``names`` (``None``: all) of checked ``feeds``, run in a batch with other requests
        of the same shapes when batching is on. ``slot``, held by the caller, is given back while the
        request waits (see the module docstring)."""
        rows, ids, max_ids = _rows(feeds), sum(a.size for a in feeds.values()), self.max_ids
        if not self.enabled or not rows:  # off, no rows, or inputs of different rows (refused as sent)
            return self.runtime.run(feeds, outputs=names)
        if rows >= self.max_rows or ids >= max_ids:
            return self._run(feeds, names, self.min_rows)
        key = _key(feeds, names)
        with self._lock:
            batch = self._open.get(key)
            if batch is not None and (batch.rows + rows > self.max_rows or batch.ids + ids > max_ids):
                self._close(key, batch)
                batch = None
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch()
            index = len(batch.feeds)
            batch.feeds.append(feeds)
            batch.rows += rows
            batch.ids += ids
            if batch.rows >= self.max_rows or batch.ids >= max_ids:
                self._close(key, batch)
        if leader:
            try:
                with _released(slot):
                    batch.full.wait(self.delay)
                    self._model.acquire()
                try:
                    with self._lock:
                        self._close(key, batch)
                    batch.outcomes = self._outcomes(batch.feeds, names)
                finally:
                    self._model.release()
            finally:  # the others never wait forever
                batch.done.set()
        else:
            with _released(slot):
                batch.done.wait()
        outcome = batch.outcomes[index]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _close(self, key: tuple[object, ...], batch: _Batch) -> None:
        """Let no more requests join ``batch`` (called holding ``_lock``)."""
        if self._open.get(key) is batch:
            del self._open[key]
        batch.full.set()

    def _outcomes(self, requests: list[Feeds], names: Sequence[str] | None) -> list[Results | Exception]:
        """Each request's results: from one run of them all, or (when that fails) of each alone."""
        if len(requests) > 1:
            try:
                merged = {k: np.concatenate([f[k] for f in requests]) for k in requests[0]}
                results = self._run(merged, names, self.min_rows)
            except Exception:
                logger.debug("a batch of model %r failed; running its requests one by one", self.name)
            else:
                bounds = np.cumsum([0, *map(_rows, requests)])
                return [{k: v[a:b] for k, v in results.items()} for a, b in itertools.pairwise(bounds)]
        outcomes: list[Results | Exception] = []
        for feeds in requests:
            try:
                outcomes.append(self._run(feeds, names, self.min_rows))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _run(self, feeds: Feeds, names: Sequence[str] | None, min_rows: int) -> Results:
        """One inference on at least ``min_rows`` rows (the last row repeated); the rows of ``feeds``, which
        has one or more rows in every input. Raises when an output does not have one row per input row (it
        cannot be split)."""
        rows = len(next(iter(feeds.values())))
        if rows < min_rows:
            extra = min_rows - rows
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in feeds.items()}
        results = self.runtime.run(feeds, outputs=names)
        if rows < min_rows or self.enabled:
            bad = [k for k, v in results.items() if v.ndim == 0 or len(v) != max(rows, min_rows)]
            if bad:
                raise ValueError(f"output(s) {', '.join(bad)} of model {self.name!r} have no batch axis")
            results = {k: v[:rows] for k, v in results.items()}
        return results
