""":class:`Predictor`: the Ray Data callable class that runs a model on batches of ids (see the package)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from ..errors import ConfigurationError, EmbedRuntimeError, InputTypeError, InvalidInputError
from ..options import RuntimeOptions
from ..providers import Providers
from ..runtime import load
from ..tensors import select_outputs
from .columns import Feed, arrow_ids, arrow_rows, fill_value, key_getter, numpy_ids, pandas_ids, take

Batch: TypeAlias = "dict[str, np.ndarray] | pd.DataFrame | pa.Table"
"""What Ray Data hands to :class:`Predictor` and gets back (``batch_format`` numpy, pandas, pyarrow)."""

ROW_ERRORS = (InvalidInputError, InputTypeError)
"""The runtime's errors about the ids themselves; any other error (onnxruntime failing) is no row's."""

OnError = Literal["raise", "column"]


def actor_cpus() -> int | None:
    """The CPUs Ray assigned to the calling actor or task (at least 1), ``None`` outside Ray."""
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, round(cpus)) if cpus else None


@dataclass
class Rows:
    """One batch in the runtime's terms: its length, each input's ids and, with ``key=``, row names."""

    count: int
    feeds: dict[str, Feed]
    key: Callable[[int], Any] | None


class Predictor:
    """A Ray Data callable class: one model per actor, batches in and out in Ray's ``batch_format``.

    Args:
        model_path: the ``.onnx`` file, at this path on every node (external data beside it).
        providers, options: as :func:`embed_runtime.load`.
        threads: intra-op threads; default: the CPUs Ray assigned to the actor (``num_cpus``, at least
            1), onnxruntime's default outside Ray or when ``options`` sets ``intra_op_threads``.
        columns: ``{input name: column}`` for inputs whose column has another name.
        outputs: the outputs to compute (default: all, masks included).
        keep: columns passed through unchanged, in this order, before the outputs.
        key: a column naming each row in error messages (kept, first).
        on_error: ``"raise"`` fails the batch on a bad row; ``"column"`` routes bad rows aside into
            ``error_column`` (see :mod:`embed_runtime.scale`).
        error_column: the column of error messages with ``on_error="column"``.

    Raises :class:`~embed_runtime.ConfigurationError` for an ``on_error``, input or column name that
    cannot work, :class:`~embed_runtime.InvalidInputError` for an unknown output, and what
    :func:`~embed_runtime.load` raises.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        providers: Providers = "auto",
        threads: int | None = None,
        options: RuntimeOptions | None = None,
        columns: Mapping[str, str] | None = None,
        outputs: Sequence[str] | str | None = None,
        keep: Sequence[str] = (),
        key: str | None = None,
        on_error: OnError = "raise",
        error_column: str = "error",
    ):
        if on_error not in ("raise", "column"):
            raise ConfigurationError(f"on_error must be 'raise' or 'column', got {on_error!r}")
        if threads is None and (options is None or options.intra_op_threads is None):
            threads = actor_cpus()
        self.rt = load(model_path, providers=providers, threads=threads, options=options)
        names = [i.name for i in self.rt.inputs]
        unknown = sorted(set(columns or {}) - set(names))
        if unknown:
            raise ConfigurationError(
                f"columns= names unknown input(s) {', '.join(map(repr, unknown))}; the model's inputs are "
                f"{', '.join(names)}"
            )
        self.columns = {name: (columns or {}).get(name, name) for name in names}
        infos = {o.name: o for o in self.rt.outputs}
        wanted = list(infos) if outputs is None else select_outputs(outputs, list(infos))
        self.outputs = outputs
        self._outputs = {name: infos[name] for name in wanted}
        self.key = key
        self.keep = list(dict.fromkeys([*([key] if key is not None else []), *keep]))
        self.on_error = on_error
        self.error_column = error_column
        made = [*wanted, *([error_column] if on_error == "column" else [])]
        clash = sorted(set(made) & set(self.keep))
        if clash:
            raise ConfigurationError(
                f"column(s) {', '.join(map(repr, clash))} would be both kept and produced (produced: "
                f"{', '.join(made)}); keep other columns or choose another error_column"
            )

    def __repr__(self) -> str:
        return f"Predictor({str(self.rt.path)!r}, on_error={self.on_error!r})"

    def __call__(self, batch: Batch) -> Batch:
        """Run one batch; returns it in the format it came in (kept columns, outputs, errors)."""
        if isinstance(batch, pa.Table):
            rows = self._read(batch.column_names, batch.num_rows, batch.column, arrow_ids)
            results, errors = self._run(rows)
            table = {c: batch.column(c) for c in self.keep}
            table |= {name: arrow_rows(values, self._outputs[name].shape) for name, values in results.items()}
            if errors is not None:
                table[self.error_column] = pa.array(errors, type=pa.string())
            return pa.table(table)
        if isinstance(batch, pd.DataFrame):
            rows = self._read(list(batch.columns), len(batch), batch.__getitem__, pandas_ids)
            results, errors = self._run(rows)
            frame = pd.DataFrame({c: batch[c] for c in self.keep}, index=batch.index)
            for name, values in results.items():
                frame[name] = values if values.ndim == 1 else list(values)
            if errors is not None:
                frame[self.error_column] = pd.array(errors, dtype=pd.ArrowDtype(pa.string()))
            return frame
        if isinstance(batch, Mapping):
            count = len(next(iter(batch.values()), ()))
            rows = self._read(list(batch), count, batch.__getitem__, numpy_ids)
            results, errors = self._run(rows)
            arrays = {c: batch[c] for c in self.keep} | results
            if errors is not None:
                arrays[self.error_column] = np.array(errors, dtype=object)
            return arrays
        raise InputTypeError(
            f"Predictor takes Ray batches (a dict of numpy arrays, a pandas DataFrame or a pyarrow Table), "
            f"not {type(batch).__name__}; use batch_format='numpy', 'pandas' or 'pyarrow'"
        )

    def _read(
        self, names: Sequence[str], count: int, column: Callable[[str], Any], ids: Callable[[Any], Feed]
    ) -> Rows:
        missing = [c for c in dict.fromkeys([*self.columns.values(), *self.keep]) if c not in names]
        if missing:
            raise InvalidInputError(
                f"the batch has no column(s) {', '.join(map(repr, missing))}; its columns are "
                f"{', '.join(map(str, names))} (map model inputs to columns with columns={{input: column}})"
            )
        feeds = {name: ids(column(col)) for name, col in self.columns.items()}
        return Rows(count, feeds, None if self.key is None else key_getter(column(self.key)))

    def _run(self, rows: Rows) -> tuple[dict[str, np.ndarray], list[str | None] | None]:
        """The outputs of every row and, with ``on_error="column"``, each row's error (``None``: fine)."""
        try:
            results = self.rt.run(rows.feeds, outputs=self.outputs)
        except ROW_ERRORS as exc:
            if self.on_error == "raise":
                raise self._blame(rows, exc) from None
            return self._route_aside(rows)
        return results, None if self.on_error == "raise" else [None] * rows.count

    def _error(self, rows: Rows, which: slice | list[int]) -> EmbedRuntimeError | None:
        """The runtime's error for these rows alone (the rules :meth:`Runtime.run` applies), or ``None``."""
        try:
            self.rt.prepare({name: take(feed, which) for name, feed in rows.feeds.items()})
        except ROW_ERRORS as exc:
            return exc
        return None

    def _blame(self, rows: Rows, exc: EmbedRuntimeError) -> EmbedRuntimeError:
        """The error of the shortest failing head of the batch (found by bisection), prefixed with its
        last row and that row's key: the rows before it pass, so the runtime's message is about that row,
        in the batch's positions. When that row passes alone, the error belongs to the batch as a whole
        (rows of different lengths where the runtime does not pad) and the prefix names the batch."""
        passing, failing, error = 0, rows.count, self._error(rows, slice(None))
        while error is not None and failing - passing > 1:  # the head [:passing] passes, [:failing] fails
            middle = (passing + failing) // 2
            found = self._error(rows, slice(0, middle))
            if found is None:
                passing = middle
            else:
                failing, error = middle, found
        row = failing - 1
        if error is None or self._error(rows, [row]) is None:
            culprit = error or exc
            where = f"a batch of {rows.count} rows"
            if rows.key is not None and rows.count:
                where += f" ({self.key} {rows.key(0)!r} to {rows.key(rows.count - 1)!r})"
            return type(culprit)(f"{where}: {culprit}")
        key = "" if rows.key is None else f" ({self.key}={rows.key(row)!r})"
        return type(error)(f"row {row} of a batch of {rows.count} rows{key}: {error}")

    def _route_aside(self, rows: Rows) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Run the rows that pass alone together; give every other row its error and filled outputs."""
        errors: list[str | None] = []
        for row in range(rows.count):
            exc = self._error(rows, [row])
            errors.append(None if exc is None else str(exc))
        good = [i for i, e in enumerate(errors) if e is None]
        part: dict[str, np.ndarray] = {}
        try:
            if good:
                part = self.rt.run({n: take(f, good) for n, f in rows.feeds.items()}, outputs=self.outputs)
        except ROW_ERRORS as exc:  # rows fine alone but not together (lengths differ, no padding)
            errors = [str(exc) if e is None else e for e in errors]
            good = []
        results = {}
        for name, info in self._outputs.items():  # no good row: the graph's shape, 0 for dynamic axes
            values = part.get(name, np.empty((0, *(d or 0 for d in info.shape[1:])), dtype=info.dtype))
            full = np.full((rows.count, *values.shape[1:]), fill_value(values.dtype), dtype=values.dtype)
            full[good] = values
            results[name] = full
        return results, errors
