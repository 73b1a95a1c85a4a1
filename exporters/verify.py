"""Export-time checks on seeded ids: parity (the Keras model vs the exported graph, :func:`compare`; with
compact tables :func:`compare_compact`) and the rewrite check (the raw tf2onnx graph vs the rewritten one,
:func:`check_rewrite`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from embed_runtime.contract import EmbeddingInfo

from .convert import cpu_session
from .errors import ExportError
from .keras_model import EmbeddingLayer, KerasModelInfo, first_line
from .large import iter_rows, snapshot
from .lookups import MaskSource, check_lookups, keras_mask, match_inputs
from .quantize import CompactTable, TableError, compact_rows, dequantize, element_bound
from .reference import KerasReference, KerasResult
from .tables import swapped_tables, table_attribute

BATCH_SIZES = (1, 7, 32)
DYNAMIC_LENGTHS = (1, 10, 37)
PADDINGS = ("end", "start", "none")


@dataclass
class Parity:
    """What :func:`compare` measured over ``cases`` cases. A difference beyond tolerance raises instead,
    so a ``Parity`` only exists for a graph that passed.

    Attributes:
        max_abs_diff: per output other than a mask, the largest |onnx - keras| (0 for an equal bool output).
        equal_masks: the mask outputs compared with Keras's ``compute_mask`` in every case (all equal);
            empty when the graph has no mask output.
        cases: how many seeded cases were run.
        exact_max_abs_diff, tables: see below (compact tables only).
    """

    max_abs_diff: dict[str, float] = field(default_factory=dict)
    equal_masks: list[str] = field(default_factory=list)
    cases: int = 0
    exact_max_abs_diff: float | None = None
    """With compact tables (:func:`compare_compact`): the largest difference from the Keras model holding
    the dequantized tables; ``max_abs_diff`` is then against the original model. None otherwise."""
    tables: list[TableError] = field(default_factory=list)
    """With compact tables: how far each compacted table's rows are from the original ones."""

    @property
    def worst(self) -> float:
        """The largest float difference over all outputs and cases."""
        return max(self.max_abs_diff.values(), default=0.0)


def sample_feeds(
    inputs: Sequence[tuple[str, int | None, int]],
    seed: int = 0,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    lengths: Sequence[int] = DYNAMIC_LENGTHS,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Seeded valid ids for inputs ``(name, static length or None, input_dim)``: every batch size, length
    (the static one where fixed) and zero padding at the end, at the start and none. Each row keeps at
    least one real id so that pooling over a fully padded row (0/0 in Keras too) is not compared. Every
    case reads the table's last row, and every padded case its first row."""
    rng = np.random.default_rng(seed)
    fixed = {length for _, length, _ in inputs if length is not None}
    for batch in batch_sizes:
        for length in sorted(fixed) if fixed else lengths:
            for padding in PADDINGS:
                feeds = {}
                for name, _, input_dim in inputs:
                    low = 1 if input_dim > 1 else 0
                    ids = rng.integers(low, input_dim, size=(batch, length), dtype=np.int64)
                    if padding != "none" and length > 1:
                        for row, n_pad in enumerate(rng.integers(0, length, size=batch)):
                            if padding == "end":
                                ids[row, length - n_pad :] = 0
                            else:
                                ids[row, :n_pad] = 0
                    _include_table_ends(ids, padding, input_dim)
                    feeds[name] = ids
                yield f"batch={batch} length={length} padding={padding}", feeds


def _include_table_ends(ids: np.ndarray, padding: str, input_dim: int) -> None:
    """Make every case read the table's last row and, where there is padding, its first row (id 0).

    The last id goes where a real id always is (the first position, or the last one under start
    padding); one padding id goes where padding already is allowed, keeping a real id in each row.
    """
    length = ids.shape[1]
    ids[0, length - 1 if padding == "start" else 0] = input_dim - 1
    if padding != "none" and length > 1:
        ids[-1, 0 if padding == "start" else length - 1] = 0


def _id_inputs(info: KerasModelInfo, input_dims: dict[str, int]) -> list[tuple[str, int | None, int]]:
    """The model's inputs as :func:`sample_feeds` takes them; an input no table reads gets ids 0 and 1."""
    return [(s.name, s.length, input_dims.get(s.name, 2)) for s in info.inputs]


def compare(
    info: KerasModelInfo,
    session: Any,
    masks: Sequence[MaskSource],
    embeddings: Sequence[EmbeddingInfo],
    input_dims: dict[str, int],
    atol: float,
    seed: int = 0,
) -> Parity:
    """Compare the Keras model with an onnxruntime ``session`` of the exported graph on :func:`sample_feeds`.

    Raises :class:`ExportError` naming the output, case and difference when a float output differs by
    more than ``atol`` (scaled up for float16 outputs) or a mask or other bool output differs anywhere,
    and when the mask outputs or the metadata ``embeddings`` disagree with the lookups Keras makes
    (:func:`exporters.lookups.check_lookups`). Keras runs once per group of cases of one shape
    (:meth:`~exporters.reference.KerasReference.batched`); a case that differs there is compared again
    with Keras called on it alone, which decides.
    """
    parity = Parity()
    names = list(info.output_names) + [m.output for m in masks]
    reference = KerasReference(info)
    cases = list(sample_feeds(_id_inputs(info, input_dims), seed))
    finite: set[str] = set()  # float outputs for which Keras gave a finite value in some case
    for (case, feeds), batched in zip(cases, reference.batched([feeds for _, feeds in cases])):
        try:
            got = dict(zip(names, session.run(names, feeds)))
        except Exception as exc:  # onnxruntime's own exception types are private
            raise ExportError(
                f"onnxruntime failed to run the exported graph ({case}): {first_line(exc)}"
            ) from None
        check = (masks, embeddings, feeds, got, atol, case, finite)
        try:
            diffs = _check_case(batched or reference(feeds), *check)
        except ExportError:
            if batched is None:
                raise
            diffs = _check_case(reference(feeds), *check)
        for name, diff in diffs.items():
            parity.max_abs_diff[name] = max(parity.max_abs_diff.get(name, 0.0), diff)
        parity.cases += 1
    never = sorted(set(parity.max_abs_diff) - finite - {m.output for m in masks})
    if never:  # NaN in every case: all-padding rows give NaN, but not every row of every case
        raise ExportError(
            f"Keras itself gives no finite value of output {never[0]!r} in any of the {parity.cases} cases: "
            "the model's weights are probably not finite (did training diverge?); the graph was not written"
        )
    parity.equal_masks = [m.output for m in masks]  # each compared in every case; a difference raised
    return parity


def _check_case(
    keras: KerasResult,
    masks: Sequence[MaskSource],
    embeddings: Sequence[EmbeddingInfo],
    feeds: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    atol: float,
    case: str,
    finite: set[str],
) -> dict[str, float]:
    """Check one case's lookups and outputs (``got``) against Keras's; returns the largest difference per
    output other than a mask, and adds to ``finite`` the outputs for which Keras gave a finite value."""
    want, calls = keras
    lookups = match_inputs(calls, feeds)
    check_lookups(lookups, masks, embeddings, case)
    want = {**want, **{mask.output: keras_mask(mask, lookups, feeds) for mask in masks}}
    masked = {m.output for m in masks}
    diffs: dict[str, float] = {}
    for name, actual in got.items():
        expected = want[name]
        if expected.shape != actual.shape:
            raise ExportError(
                f"output {name!r} has shape {actual.shape} in ONNX but {expected.shape} in Keras ({case})"
            )
        if expected.dtype == bool or actual.dtype == bool:
            bad = int(np.count_nonzero(expected.astype(bool) != actual))
            if bad:
                kind = "mask" if name in masked else "output"
                raise ExportError(f"{kind} {name!r} differs from Keras at {bad} positions ({case})")
            if name not in masked:
                diffs[name] = 0.0
                finite.add(name)
            continue
        if np.isfinite(expected).any():
            finite.add(name)
        delta = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        delta[np.isnan(actual) & np.isnan(expected)] = 0.0  # NaN where Keras has NaN too (all-padding rows)
        diffs[name] = float(np.max(np.nan_to_num(delta, nan=np.inf), initial=0.0))
        limit = atol if expected.dtype != np.float16 else max(atol, 1e-2)
        if diffs[name] > limit:
            raise ExportError(
                f"output {name!r} differs from Keras by {diffs[name]:.3g} > tolerance {limit:g} ({case}); "
                "the graph was not written"
            )
    return diffs


def check_rewrite(
    raw: onnx.ModelProto, rewritten: Any, info: KerasModelInfo, input_dims: dict[str, int], seed: int
) -> float:
    """Run the raw tf2onnx graph and an onnxruntime session of the rewritten one on :func:`sample_feeds`;
    returns their largest difference, which must be 0: the rewrite passes only remove redundant work and
    rename things. Raises :class:`ExportError` otherwise (a bug of the exporter)."""
    before = cpu_session(raw)
    names = list(info.output_names)
    worst = 0.0
    for _, feeds in sample_feeds(_id_inputs(info, input_dims), seed):
        for a, b in zip(before.run(names, feeds), rewritten.run(names, feeds)):
            worst = max(
                worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            )
    if worst != 0.0:
        raise ExportError(
            f"the ONNX rewrite changed outputs by up to {worst:.3g}; this is a bug, please report it"
        )
    return worst


def measure_table(emb: EmbeddingLayer, attribute: str, table_dtype: str) -> tuple[np.ndarray, TableError]:
    """The dequantized values of ``emb``'s table stored as ``table_dtype`` (what the graph computes) and
    their :class:`TableError`, computed row chunk by row chunk from the table the layer holds now in
    ``attribute``."""
    rows, width = emb.shape
    deq = np.empty((rows, width), np.float32)
    error = TableError(emb.name, table_dtype)
    start = 0
    for chunk in iter_rows(snapshot(emb.layer.__dict__[attribute]), emb.dtype):
        stored, scale = compact_rows(chunk, table_dtype)
        deq[start : start + len(chunk)] = dequantize(stored, scale)
        error.update(chunk, deq[start : start + len(chunk)], element_bound(chunk, scale), start)
        start += len(chunk)
    return deq, error


@dataclass(frozen=True)
class MeasuredTable:
    """One compact table as :func:`measure_table` measured it: the dequantized ``values`` its layer holds
    for the checks (:func:`dequantized`) and their ``error``."""

    layer: EmbeddingLayer
    values: np.ndarray
    error: TableError


def measure_tables(
    info: KerasModelInfo, compact: Sequence[CompactTable], table_dtype: str
) -> list[MeasuredTable]:
    """Each ``compact`` table measured (:func:`measure_table`), once for every check of the export."""
    attribute = table_attribute(info.flavour)
    return [MeasuredTable(c.layer, *measure_table(c.layer, attribute, table_dtype)) for c in compact]


@contextmanager
def dequantized(info: KerasModelInfo, measured: Sequence[MeasuredTable]) -> Iterator[None]:
    """While the block runs, the layer of each ``measured`` table holds its dequantized values, what the
    graph computes (:func:`exporters.tables.swapped_tables`); the tables are back afterwards."""
    import tensorflow as tf

    attribute = table_attribute(info.flavour)
    with swapped_tables() as put:
        for m in measured:
            put(m.layer, attribute, tf.convert_to_tensor(m.values))
        yield


def compare_compact(
    info: KerasModelInfo,
    measured: Sequence[MeasuredTable],
    table_dtype: str,
    compare_at: Callable[[float], Parity],
    atol: float,
) -> Parity:
    """:func:`compare` for a graph with compact tables (``compare_at(tolerance)`` runs :func:`compare` on
    it): within ``atol`` of the Keras model holding the dequantized tables (``exact_max_abs_diff``), every
    table element within its bound (``tables``, see :class:`exporters.quantize.TableError`), and the
    differences from the original model measured (``max_abs_diff``); a non-finite difference fails."""
    with dequantized(info, measured):
        try:
            exact = compare_at(atol)
        except ExportError as exc:
            raise ExportError(
                f"with {table_dtype} tables, the graph must match the Keras model holding the dequantized "
                f"tables, but: {exc}. A table the graph also reads outside a lookup, copied into another "
                "constant (a tied output projection), keeps its float values there; export such a model "
                "with table_dtype='float32'"
            ) from None
    parity = compare_at(math.inf)
    for name, diff in parity.max_abs_diff.items():
        if not math.isfinite(diff):
            raise ExportError(
                f"output {name!r} is not finite with the {table_dtype} tables where Keras's is; export "
                "with table_dtype='float32'"
            )
    parity.exact_max_abs_diff = exact.worst
    parity.tables = [m.error for m in measured]
    return parity
