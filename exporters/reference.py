"""The Keras side of the parity check: the model itself, called eagerly, and the Embedding calls it made.

Calling a Keras model eagerly costs about the same for 1 row as for 100 (an RNN steps through Python once
per time step), so :meth:`KerasReference.batched` calls it once per group of cases whose inputs have the
same shapes, on their rows concatenated, and splits the results back by rows. Every case is still compared
on its own. Keras layers at inference keep rows independent; for a model whose rows depend on each other,
:func:`exporters.verify.compare` checks a case that differs against a call on that case alone before it
fails the export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .keras_model import EmbeddingLayer, KerasModelInfo, wrapped_calls
from .tracing import call_model

Feeds = dict[str, np.ndarray]
KerasResult = tuple[dict[str, np.ndarray], list[tuple[EmbeddingLayer, np.ndarray]]]
"""Keras's outputs by name, and the Embedding calls of that forward pass: (layer, ids it received)."""


@contextmanager
def _recording(info: KerasModelInfo) -> Iterator[list[tuple[EmbeddingLayer, Any]]]:
    """While the block runs, every call of an Embedding layer of ``info`` appends ``(layer, the ids it
    received)`` to the yielded list (Keras 3 calls ``quantized_call`` on quantized layers)."""
    calls: list[tuple[EmbeddingLayer, Any]] = []
    by_layer = {id(emb.layer): emb for emb in info.embeddings}

    def wrap(layer: Any, method: Callable[..., Any]) -> Callable[..., Any]:
        def record(ids: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((by_layer[id(layer)], ids))
            return method(ids, *args, **kwargs)

        return record

    with wrapped_calls([emb.layer for emb in info.embeddings], wrap, ("call", "quantized_call")):
        yield calls


def _split(result: KerasResult, rows: Sequence[int]) -> list[KerasResult] | None:
    """``result`` of concatenated cases split back into one per case of ``rows`` rows; None when some
    output or recorded ids do not have the rows on their first axis."""
    outputs, calls = result
    arrays = [*outputs.values(), *(ids for _, ids in calls)]
    if any(a.ndim == 0 or a.shape[0] != sum(rows) for a in arrays):
        return None
    ends = np.cumsum(rows)
    return [
        (
            {name: value[end - n : end] for name, value in outputs.items()},
            [(emb, ids[end - n : end]) for emb, ids in calls],
        )
        for end, n in zip(ends, rows)
    ]


class KerasReference:
    """The Keras model of ``info``, called eagerly (``training=False``) while its Embedding calls are
    recorded."""

    def __init__(self, info: KerasModelInfo) -> None:
        self.info = info

    def __call__(self, feeds: Feeds) -> KerasResult:
        """Keras's outputs on ``feeds`` (input name -> ids) and the Embedding calls of that pass."""
        with _recording(self.info) as calls:
            outputs = call_model(self.info, [feeds[s.name] for s in self.info.inputs])
        return (
            {name: np.asarray(t) for name, t in outputs.items()},
            [(emb, np.asarray(ids)) for emb, ids in calls],
        )

    def batched(self, cases: Sequence[Feeds]) -> list[KerasResult | None]:
        """Keras's result for each of ``cases``, in order, from one call per group of cases whose inputs
        have the same shapes past the batch axis; None where a group's results do not split by rows, or
        the case is alone in its group (call it alone)."""
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i, feeds in enumerate(cases):
            groups.setdefault(tuple(feeds[s.name].shape[1:] for s in self.info.inputs), []).append(i)
        results: list[KerasResult | None] = [None] * len(cases)
        for group in groups.values():
            if len(group) == 1:
                continue
            joined = {s.name: np.concatenate([cases[i][s.name] for i in group]) for s in self.info.inputs}
            rows = [len(cases[i][self.info.inputs[0].name]) for i in group]
            for i, part in zip(group, _split(self(joined), rows) or []):
                results[i] = part
        return results
