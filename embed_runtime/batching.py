"""Chunking for :meth:`~embed_runtime.Runtime.run_batched`: the batch size check, the split of any input
along the batch axis, the optional progress bar and the loop over the chunks (:func:`run_chunks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np

from .errors import ConfigurationError, InputTypeError, InvalidInputError


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` as an int, or :class:`ConfigurationError` unless it is an integer >= 1."""
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and batch_size >= 1:
        return int(batch_size)
    raise ConfigurationError(
        f"batch_size must be an integer >= 1 (sequences per chunk), got {batch_size!r} "
        f"({type(batch_size).__name__})"
    )


def batch_len(chunk: Any) -> int:
    """Sequences in one chunk made by :func:`chunks`."""
    if isinstance(chunk, Mapping):
        chunk = next(iter(chunk.values()))
    return len(chunk)


def chunks(inputs: Any, size: int, names: list[str]) -> tuple[Iterator[Any], int | None]:
    """Split ``inputs`` along the batch axis; returns the chunk iterator and the total, when known."""
    if isinstance(inputs, Mapping):
        arrays = {k: v if isinstance(v, np.ndarray) else list(v) for k, v in inputs.items()}
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidInputError(f"inputs have different batch lengths: {lengths}")
        total = next(iter(lengths.values()), 0)
        return (({k: v[i : i + size] for k, v in arrays.items()} for i in range(0, total, size)), total)
    if isinstance(inputs, (np.ndarray, list, tuple)):
        if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
            raise InvalidInputError(f"input {names[0]!r} is a scalar; expected (batch, seq) ids")
        return ((inputs[i : i + size] for i in range(0, len(inputs), size)), len(inputs))
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        it = iter(inputs)
        return (iter(lambda: list(islice(it, size)), [])), getattr(inputs, "__len__", lambda: None)()
    raise InputTypeError(
        f"run_batched needs an array, a dict or an iterable of sequences, not {type(inputs).__name__}"
    )


def progress_bar(total: int | None, enabled: bool) -> Any | None:
    """A tqdm bar, or ``None`` when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="seq", desc="embed_runtime")


def run_chunks(
    run: Callable[[Any], dict[str, np.ndarray]],
    inputs: Any,
    batch_size: object,
    names: list[str],
    progress: bool,
) -> Iterator[dict[str, np.ndarray]]:
    """``run`` on each chunk of ``batch_size`` sequences of ``inputs`` (a model with inputs ``names``), one
    result at a time; the batch size is checked before the first chunk is asked for."""
    size = check_batch_size(batch_size)
    parts, total = chunks(inputs, size, names)
    return _stream(run, parts, progress_bar(total, progress))


def _stream(
    run: Callable[[Any], dict[str, np.ndarray]], parts: Iterator[Any], bar: Any | None
) -> Iterator[dict[str, np.ndarray]]:
    try:
        for chunk in parts:
            result = run(chunk)
            if bar is not None:
                bar.update(batch_len(chunk))
            yield result
    finally:
        if bar is not None:
            bar.close()
