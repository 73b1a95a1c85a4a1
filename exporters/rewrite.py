"""ONNX-level rewriting of tf2onnx's output into the artifact the runtime reads.

tf2onnx translates what TensorFlow traced, which for a Keras 3 Embedding is a ``Gather`` wrapped in
index arithmetic (``Cast``, ``Less``, ``Add``, ``Mul``...) that maps negative ids to the end of the table.
ONNX ``Gather`` already accepts indices in ``[-input_dim, input_dim)`` with exactly that meaning, and the
runtime rejects negative ids anyway, so the arithmetic is redundant. :func:`collapse_index_chain` removes
it only after *proving* the chain is the identity on every valid id (it runs the chain through
onnxruntime on all ids ``0..input_dim-1``, or on a large sample with both ends for huge tables).

The other primitives are bookkeeping: mask outputs, readable names, dead-node removal, the lowest IR
version, and the contract's metadata (named axes are in :mod:`exporters.dims`). The passes that apply them, in order, are in :mod:`exporters.passes`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embed_runtime.contract import MAX_IR_VERSION, PADDING_ID, ModelMetadata

from .convert import cpu_session
from .errors import ExportError

INDEX_OPS = frozenset(
    {
        "Cast",
        "Add",
        "Sub",
        "Mul",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "Equal",
        "Where",
        "And",
        "Or",
        "Identity",
        "Mod",
        "Min",
        "Max",
        "Clip",
        "Abs",
    }
)
"""Element-wise ops that may appear between an id input and the lookup ``Gather``."""

EXHAUSTIVE_PROOF_LIMIT = 1 << 21
"""Tables up to this many rows have their index chain checked on every id; larger ones on a sample."""


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def _names_used(node: onnx.NodeProto) -> set[str]:
    """The node's inputs plus every name its subgraphs use (outer-scope values are used implicitly)."""
    used = {name for name in node.input if name}
    for sub in _subgraphs(node):
        for inner in _all_nodes(sub):
            used.update(name for name in inner.input if name)
    return used


def strip_initializer_inputs(model: onnx.ModelProto) -> None:
    """Drop graph inputs that are initializers (old-IR tf2onnx output lists weights as inputs)."""
    weights = {init.name for init in model.graph.initializer}
    keep = [inp for inp in model.graph.input if inp.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    """The integer attribute ``name`` of ``node``, or ``default`` when it is not set."""
    return next((a.i for a in node.attribute if a.name == name), default)


def lookups(model: onnx.ModelProto, table_name: str) -> list[onnx.NodeProto]:
    """The top-level ``Gather`` nodes that read rows of ``table_name``."""
    found = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table_name]
    for node in found:
        axis = int_attr(node, "axis", 0)
        if axis != 0:
            raise ExportError(f"Gather {node.name!r} reads the table along axis {axis}, not rows")
    return found


def producers_of(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """``{value name: the node of graph that outputs it}``, for the top-level nodes of ``graph``."""
    return {out: node for node in graph.node for out in node.output}


def _index_chain(model: onnx.ModelProto, indices: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """The one graph input ``indices`` is computed from, and the element-wise nodes in between.

    None when the indices depend on more than one input or pass through an op outside INDEX_OPS.
    """
    producers = producers_of(model.graph)
    weights = {init.name for init in model.graph.initializer}
    graph_inputs = {inp.name for inp in model.graph.input}
    sources: set[str] = set()
    chain: dict[int, onnx.NodeProto] = {}
    queue = deque([indices])
    while queue:
        name = queue.popleft()
        if name in graph_inputs:
            sources.add(name)
        elif name in weights:
            continue
        elif name in producers:
            node = producers[name]
            if node.op_type == "Constant":
                chain[id(node)] = node
                continue
            if node.op_type not in INDEX_OPS:
                return None
            if id(node) not in chain:
                chain[id(node)] = node
                queue.extend(n for n in node.input if n)
        else:
            return None
    if len(sources) != 1:
        return None
    order = {id(node): i for i, node in enumerate(model.graph.node)}
    return sources.pop(), sorted(chain.values(), key=lambda n: order[id(n)])


def _proof_ids(input_dim: int, seed: int = 0) -> np.ndarray:
    """Every valid id for small tables; for big ones both ends, powers of two and a random sample."""
    if input_dim <= EXHAUSTIVE_PROOF_LIMIT:
        return np.arange(input_dim, dtype=np.int64)
    rng = np.random.default_rng(seed)
    powers = 1 << np.arange(int(np.log2(input_dim)) + 1, dtype=np.int64)
    parts = [
        np.arange(4096),
        np.arange(input_dim - 4096, input_dim),
        powers,
        powers - 1,
        rng.integers(0, input_dim, 1 << 20),
    ]
    return np.unique(np.concatenate(parts).astype(np.int64))


def _run_chain(
    model: onnx.ModelProto, source: str, chain: list[onnx.NodeProto], output: str, ids: np.ndarray
) -> np.ndarray:
    """Evaluate the index chain alone in onnxruntime on ``ids`` laid out as one (1, n) batch."""
    used = {name for node in chain for name in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    graph = helper.make_graph(
        list(chain),
        "index_chain",
        [helper.make_tensor_value_info(source, TensorProto.INT64, [1, None])],
        [helper.make_empty_tensor_value_info(output)],
        initializer=inits,
    )
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return cpu_session(probe).run([output], {source: ids.reshape(1, -1)})[0].reshape(-1)


def collapse_index_chain(model: onnx.ModelProto, gather: onnx.NodeProto, input_dim: int) -> str | None:
    """Feed ``gather`` straight from its id input when the chain in between is the identity on [0, input_dim).

    Returns the id input's name, or None when the indices do not come from exactly one graph input.
    Raises :class:`ExportError` when a chain exists but changes some valid id (nothing is rewritten then).
    """
    found = _index_chain(model, gather.input[1])
    if found is None:
        return None
    source, chain = found
    if chain:
        ids = _proof_ids(input_dim)
        result = _run_chain(model, source, chain, gather.input[1], ids)
        if not np.array_equal(result.astype(np.int64), ids):
            bad = int(np.flatnonzero(result.astype(np.int64) != ids)[0])
            raise ExportError(
                f"the index arithmetic before {gather.name!r} maps id {int(ids[bad])} to {int(result[bad])}; "
                "refusing to simplify a lookup that is not the identity on valid ids"
            )
        gather.input[1] = source
    return source


def add_mask_output(model: onnx.ModelProto, ids: str, name: str, dims: list[int | str]) -> None:
    """Append the bool output ``name`` = ``ids != PADDING_ID`` (ONNX has no NotEqual: Not(Equal)).

    ``ids`` is a graph input (int64), or an id tensor computed in the graph, of any integer type: that is
    cast to int64 first.
    """
    zero = "padding_id"
    if not any(init.name == zero for init in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(np.array(PADDING_ID, np.int64), zero))
    if ids not in {inp.name for inp in model.graph.input}:
        cast = helper.make_node("Cast", [ids], [f"{name}/ids"], name=f"{name}/Cast", to=TensorProto.INT64)
        model.graph.node.append(cast)
        ids = f"{name}/ids"
    equal = f"{name}/is_padding"
    model.graph.node.extend(
        [
            helper.make_node("Equal", [ids, zero], [equal], name=f"{name}/Equal"),
            helper.make_node("Not", [equal], [name], name=f"{name}/Not"),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.BOOL, dims))


def rename(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value everywhere: initializers, inputs, outputs and node references, subgraphs included."""
    if old == new:
        return
    for collection in (model.graph.initializer, model.graph.input, model.graph.output):
        for item in collection:
            if item.name == old:
                item.name = new
    for node in _all_nodes(model.graph):
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


def remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on, and unused opset domains."""
    producers = producers_of(model.graph)
    needed = {out.name for out in model.graph.output}
    live: set[int] = set()
    queue = deque(needed)
    while queue:
        node = producers.get(queue.popleft())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        for name in _names_used(node):
            if name not in needed:
                needed.add(name)
                queue.append(name)
    nodes = [n for n in model.graph.node if id(n) in live]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    domains = {n.domain or "" for n in _all_nodes(model.graph)} | {""}
    opsets = [o for o in model.opset_import if (o.domain or "") in domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)


def finalize(model: onnx.ModelProto, metadata: ModelMetadata, producer_version: str) -> None:
    """Lowest IR version for the opsets used (at most MAX_IR_VERSION), producer and metadata; then check."""
    ir = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if ir > MAX_IR_VERSION:
        raise ExportError(
            f"opset {opset_of(model)} needs IR version {ir}; the contract allows <= {MAX_IR_VERSION}"
        )
    model.ir_version = ir
    model.producer_name = "embed-runtime exporters"
    model.producer_version = producer_version
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    return next(o.version for o in model.opset_import if (o.domain or "") == "")
