"""Do the graph's mask outputs and metadata say what Keras's Embedding layers really do?

The parity check compares values, which cannot tell two layers with equal tables apart. So, on every case,
:func:`check_lookups` compares the graph's mask outputs and the metadata's ``inputs`` with the Embedding
calls Keras made on that case (recorded by :class:`exporters.tracing.KerasReference`): every mask output
must mask ids a call of its layer received, every masked call must have its mask output, and the
metadata must list exactly the inputs each layer reads. :func:`keras_mask` is Keras's own mask of a mask
output, computed on the ids its layer received (for ids computed in the model, those ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embed_runtime.contract import EmbeddingInfo

from .errors import ExportError
from .keras_model import EmbeddingLayer


@dataclass(frozen=True)
class MaskSource:
    """Where a mask output comes from: the Embedding layer and the input whose ids it masks (None for ids
    computed in the model)."""

    output: str
    embedding: EmbeddingLayer
    input: str | None


@dataclass(frozen=True)
class Lookup:
    """One Embedding call in Keras: the layer, the ids it received, and the graph inputs fed those ids."""

    embedding: EmbeddingLayer
    ids: np.ndarray
    inputs: frozenset[str]

    @property
    def where(self) -> str:
        return f"input {sorted(self.inputs)[0]!r}" if self.inputs else "ids computed inside the model"


def match_inputs(
    calls: Sequence[tuple[EmbeddingLayer, np.ndarray]], feeds: dict[str, np.ndarray]
) -> list[Lookup]:
    """Each Embedding call with the inputs whose feeds equal the ids it received (Keras may have cast
    them to int32: equal values match)."""
    return [
        Lookup(
            emb,
            ids,
            frozenset(x for x, fed in feeds.items() if fed.shape == ids.shape and (fed == ids).all()),
        )
        for emb, ids in calls
    ]


def _masks_call(mask: MaskSource, lookup: Lookup) -> bool:
    """Whether ``mask`` may be the mask of that call (a computed-ids mask: any call of its layer)."""
    return lookup.embedding.layer is mask.embedding.layer and (
        mask.input is None or mask.input in lookup.inputs
    )


def check_lookups(
    lookups: Sequence[Lookup], masks: Sequence[MaskSource], infos: Sequence[EmbeddingInfo], case: str
) -> None:
    """Raise :class:`ExportError` unless the graph's mask outputs are exactly the lookups Keras masks, and
    the metadata's ``inputs`` exactly the inputs each layer reads, in one Keras call (``case``).

    Calls of a layer whose table is not in the graph (its output is never used) are not checked, nor is
    the metadata of a layer Keras never called (its table read directly).
    """
    for mask in masks:
        if not any(_masks_call(mask, lookup) for lookup in lookups):
            what = f"input {mask.input!r}" if mask.input else "ids computed inside the model"
            raise ExportError(
                f"mask output {mask.output!r} masks {what}, but Keras's Embedding {mask.embedding.name!r} "
                f"does not read them ({case})"
            )
    called = {lookup.embedding.name for lookup in lookups}
    for info in infos:
        if info.layer not in called:
            continue  # a table read without calling its layer (``tf.gather(layer.embeddings, ids)``)
        for x in info.inputs:
            if not any(lookup.embedding.name == info.layer and x in lookup.inputs for lookup in lookups):
                raise ExportError(
                    f"the metadata says Embedding {info.layer!r} reads input {x!r}, but in Keras it does "
                    f"not ({case})"
                )
    in_graph = {info.layer for info in infos}
    for lookup in lookups:
        emb = lookup.embedding
        if emb.name not in in_graph:
            continue
        if emb.mask_zero and not any(_masks_call(mask, lookup) for mask in masks):
            raise ExportError(
                f"Keras masks the ids Embedding {emb.name!r} reads from {lookup.where}, but the graph has no "
                f"mask output for them ({case})"
            )
        listed = [set(i.inputs) for i in infos if i.layer == emb.name]
        if lookup.inputs and not any(lookup.inputs & inputs or not inputs for inputs in listed):
            raise ExportError(
                f"Keras's Embedding {emb.name!r} reads {lookup.where}, but the metadata does not say so "
                f"({case})"
            )


def keras_mask(mask: MaskSource, lookups: Sequence[Lookup], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Keras's own mask for ``mask`` (checked by :func:`check_lookups` first): its layer's
    ``compute_mask`` on the ids it received; for computed ids, those of the call no input fed."""
    layer = mask.embedding.layer
    if mask.input is not None:
        return np.asarray(layer.compute_mask(feeds[mask.input]))
    mine = [lookup for lookup in lookups if lookup.embedding.layer is layer]
    computed = [lookup for lookup in mine if not lookup.inputs] or mine
    return np.asarray(layer.compute_mask(computed[0].ids))
