"""The lookup fast path: outputs that are only embedding lookups, answered by numpy instead of onnxruntime.

The exporter proves which graph output is exactly an Embedding's lookup on a graph input
(``EmbeddingInfo.lookup_output``, written by :mod:`exporters.pure_lookups`); a mask output is
``ids != padding_id`` by the contract. For such outputs, :func:`build` reads each table out of the model
once at load, by running the model itself on every id (the rows as onnxruntime computes them, in the
output's dtype: a float16 or int8 table comes out dequantized exactly as the graph dequantizes it; no
protobuf is parsed), then runs random probes through both paths and keeps the fast path only when every
byte agrees. Otherwise the runtime stays on onnxruntime and warns (:class:`LookupWarning`).

A call is then: the ids validated as on every path (the hot path calls :meth:`RangePlan.check
<embed_runtime.inputs.RangePlan.check>`, the general path goes through :meth:`Runtime.prepare
<embed_runtime.Runtime.prepare>`, which calls it), then ``table.take(ids, 0)`` per lookup output and
``ids != padding_id`` per mask. Tables above ``RuntimeOptions.lookup_max_bytes`` stay on onnxruntime (their
copy would double the memory of a big model); ``RuntimeOptions(lookup_fast_path=False)`` turns it off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .binding import Results
from .contract import ModelMetadata
from .conversion import MAX_IDS
from .inputs import SMALL_BATCH_IDS, range_plan
from .options import RuntimeOptions
from .tensors import TensorInfo, stand_in


class LookupWarning(RuntimeWarning):
    """A model declares lookup outputs that the load-time probe does not confirm; it runs on onnxruntime."""


class Refused(Exception):
    """Why a declared lookup cannot take the fast path (the message says it)."""


class TooBig(Refused):
    """The tables exceed ``RuntimeOptions.lookup_max_bytes``: a choice, not a fault of the model."""


@dataclass(frozen=True)
class Part:
    """How one output is answered: row ``id`` of ``table`` for each id of ``input``, or, without a table,
    the mask ``ids != padding_id``."""

    input: str
    table: np.ndarray | None
    padding_id: int = 0

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        ids = feeds[self.input]
        return ids != self.padding_id if self.table is None else self.table.take(ids, 0)


HotPath = Callable[[np.ndarray], "Results | None"]


class LookupPath:
    """The outputs a model answers from its tables (``parts``, in graph order): :meth:`run` for validated
    feeds; :attr:`run_hot` (:func:`hot_path`) when the model has one id input and every output is in
    ``parts`` (``complete``), else ``None``."""

    def __init__(self, parts: dict[str, Part], inputs: Sequence[TensorInfo], complete: bool):
        self.parts = parts
        self.names = tuple(parts)
        hot = complete and len(inputs) == 1 and inputs[0].dtype.kind in "iu"
        self.run_hot: HotPath | None = hot_path(parts, inputs[0]) if hot else None

    def describe(self) -> str:
        """What runs, for ``repr`` and ``rt.execution``."""
        shown = [
            f"{n} ids != {p.padding_id}"
            if p.table is None
            else f"{n} {'x'.join(map(str, p.table.shape))} {p.table.dtype}"
            for n, p in self.parts.items()
        ]
        return f"numpy lookup ({', '.join(shown)})"

    def run(self, feeds: Mapping[str, np.ndarray], names: tuple[str, ...]) -> Results | None:
        """The outputs ``names`` for validated ``feeds``; ``None`` when one of them is not a lookup."""
        parts = self.parts
        if not all(n in parts for n in names):
            return None
        return {n: parts[n](feeds) for n in names}


def hot_path(parts: dict[str, Part], info: TensorInfo) -> HotPath:
    """The hot path of a model whose one id input is ``info`` and whose every output is in ``parts``: every
    output for ids of the graph's dtype and rank, checked by :meth:`RangePlan.check
    <embed_runtime.inputs.RangePlan.check>` (a few ids as they are, more through the unsigned view); ``None``
    for anything else and for bad ids (the general path then converts, or raises the error every path
    raises). A closure: its constants are local variables, the cheapest reads in Python."""
    dtype, length, name = info.dtype, info.input_length, info.name
    plan = range_plan(info.dtype, info)
    check_few, check, view = plan.unviewed().check, plan.check, plan.view_ids
    items = tuple(parts.items())
    table = items[0][1].table if len(items) == 1 else None
    output, take = items[0][0], None if table is None else table.take

    def run_hot(ids: np.ndarray) -> Results | None:
        shape = ids.shape
        if ids.dtype is not dtype or len(shape) != 2 or (length is not None and shape[1] != length):
            return None
        size = ids.size
        if not (check_few(ids) if size <= SMALL_BATCH_IDS else size <= MAX_IDS and check(view(ids))):
            return None
        if take is not None:
            return {output: take(ids, 0)}
        feeds = {name: ids}
        return {n: part(feeds) for n, part in items}

    return run_hot


def arranged_ids(rows: int, length: int, dtype: np.dtype) -> np.ndarray:
    """Every id ``0 .. rows - 1`` once, in rows of ``length`` ids, the last row padded with id 0."""
    ids = np.zeros(-(-rows // length) * length, dtype=dtype)
    ids[:rows] = np.arange(rows)
    return ids.reshape(-1, length)


def _feeds(inputs: Sequence[TensorInfo], name: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """``ids`` for input ``name``, zeros (id 0 is always valid) for the others, with the same rows."""
    return {i.name: ids if i.name == name else stand_in(i, *ids.shape) for i in inputs}


def _read_tables(
    session: ort.InferenceSession,
    metadata: ModelMetadata,
    inputs: Sequence[TensorInfo],
    outputs: Mapping[str, TensorInfo],
    max_bytes: int,
) -> dict[str, Part]:
    """The parts of every declared lookup output and mask, the tables read by running the model."""
    by_name = {i.name: i for i in inputs}
    declared = [e for e in metadata.embeddings if e.lookup_output is not None]
    parts: dict[str, Part] = {}
    size = 0
    for emb in declared:
        info, out = by_name.get(emb.inputs[0]), outputs.get(str(emb.lookup_output))
        if info is None or out is None or info.dtype.kind not in "iu" or len(info.shape) != 2:
            raise Refused(
                f"entry {emb.layer!r} declares output {emb.lookup_output!r} as a lookup of input "
                f"{emb.inputs[0]!r}, which the graph does not have as an id input and output"
            )
        size += emb.input_dim * emb.output_dim * out.dtype.itemsize
        if size > max_bytes:
            raise TooBig(
                f"its lookup tables hold more than RuntimeOptions.lookup_max_bytes={max_bytes:,} bytes"
            )
        ids = arranged_ids(emb.input_dim, info.input_length or emb.input_dim, info.dtype)  # one row if free
        try:
            (rows,) = session.run([out.name], _feeds(inputs, info.name, ids))
        except Exception as exc:
            raise Refused(f"onnxruntime could not run it on every id of {info.name!r}: {exc}") from None
        if rows.shape[:2] != ids.shape or rows.ndim != 3:
            raise Refused(f"output {out.name!r} has shape {rows.shape} for ids of shape {ids.shape}")
        parts[out.name] = Part(
            info.name, np.ascontiguousarray(rows.reshape(-1, rows.shape[2])[: emb.input_dim])
        )
    for emb in metadata.embeddings:
        if emb.mask_output in outputs and len(emb.inputs) == 1 and emb.inputs[0] in by_name:
            parts[str(emb.mask_output)] = Part(emb.inputs[0], None, emb.padding_id or 0)
    return {o: parts[o] for o in outputs if o in parts}


def _probe(session: ort.InferenceSession, path: LookupPath, inputs: Sequence[TensorInfo]) -> None:
    """Random ids (padding and the last id included) for the id inputs, zeros for any other input (of any
    rank: :func:`~embed_runtime.tensors.stand_in`), through onnxruntime and ``path``: every output byte for
    byte, or :class:`Refused`."""
    rng = np.random.default_rng(0)
    for batch, length in ((3, 7), (1, 1)):
        feeds = {}
        for info in inputs:
            feeds[info.name] = ids = stand_in(info, batch, length)
            if info.input_dim is not None and info.dtype.kind in "iu" and ids.size:
                ids[...] = rng.integers(0, info.input_dim, ids.shape)
                ids.flat[0], ids.flat[-1] = 0, info.input_dim - 1
        want = dict(zip(path.names, session.run(list(path.names), feeds)))
        got = path.run(feeds, path.names) or {}
        for name, w in want.items():
            g = got[name]
            if g.dtype != w.dtype or g.shape != w.shape or g.tobytes() != w.tobytes():
                raise Refused(f"output {name!r} on probe ids differs from onnxruntime's: it is not a lookup")


def build(
    session: ort.InferenceSession,
    metadata: ModelMetadata,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    options: RuntimeOptions,
    model: str,
) -> tuple[LookupPath | None, str]:
    """The fast path of a model and what runs (``numpy lookup (...)`` or ``onnxruntime: <why>``). A
    declaration the probe refutes or that does not fit the graph warns (:class:`LookupWarning`)."""
    if not options.lookup_fast_path:
        return None, "onnxruntime: RuntimeOptions(lookup_fast_path=False)"
    if not any(e.lookup_output for e in metadata.embeddings):
        return None, "onnxruntime: no output is a declared lookup"
    try:
        parts = _read_tables(
            session, metadata, inputs, {o.name: o for o in outputs}, options.lookup_max_bytes
        )
        path = LookupPath(parts, inputs, complete=len(parts) == len(outputs))
        _probe(session, path, inputs)
    except Refused as why:
        if not isinstance(why, TooBig):
            message = f"{model}: lookup fast path refused, running on onnxruntime: {why}"
            warnings.warn(message, LookupWarning, stacklevel=4)
        return None, f"onnxruntime: {why}"
    return path, path.describe()
