"""Export-time checks on seeded ids: parity (the Keras model vs the exported graph, :func:`compare`) and
the rewrite check (the raw tf2onnx graph vs the rewritten one, :func:`check_rewrite`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from embed_runtime.contract import EmbeddingInfo

from .convert import cpu_session
from .errors import ExportError
from .keras_model import KerasModelInfo, first_line
from .lookups import MaskSource, check_lookups, keras_mask, match_inputs
from .reference import KerasReference, KerasResult

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
    """

    max_abs_diff: dict[str, float] = field(default_factory=dict)
    equal_masks: list[str] = field(default_factory=list)
    cases: int = 0

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
    for (case, feeds), batched in zip(cases, reference.batched([feeds for _, feeds in cases])):
        try:
            got = dict(zip(names, session.run(names, feeds)))
        except Exception as exc:  # onnxruntime's own exception types are private
            raise ExportError(
                f"onnxruntime failed to run the exported graph ({case}): {first_line(exc)}"
            ) from None
        check = (masks, embeddings, feeds, got, atol, case)
        try:
            diffs = _check_case(batched or reference(feeds), *check)
        except ExportError:
            if batched is None:
                raise
            diffs = _check_case(reference(feeds), *check)
        for name, diff in diffs.items():
            parity.max_abs_diff[name] = max(parity.max_abs_diff.get(name, 0.0), diff)
        parity.cases += 1
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
) -> dict[str, float]:
    """Check one case's lookups and outputs (``got``) against Keras's; returns the largest difference per
    output other than a mask."""
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
            continue
        delta = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        delta[np.isnan(actual) & np.isnan(expected)] = 0.0  # NaN where Keras has NaN too
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
