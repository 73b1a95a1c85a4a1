"""Reproducible graphs: names and order that depend only on what the graph computes.

tf2onnx names nodes, values and initializers from per-process counters (``Less__61`` in one run,
``Less__25`` in the next), writes such a counter into the graph's doc string, and orders some things by
hash order (which of two Loop outputs holding one value keeps the ``Identity``), so two exports of one
model differ byte by byte. :func:`canonicalize` first places every ``Identity`` by a fixed rule
(:func:`_settle_identities`), then renames and orders everything from a walk of the graph: depth first
from the graph outputs, in their order, through each node's inputs in their order (a node's subgraphs are
walked the same way, and the outer values they use count as its inputs). Nodes come out in that
(topological) order, named ``<op>_<n>``; a node's outputs are ``<node>:<k>``; initializers ``const_<n>`` in
order of first use; subgraphs ``<node>.<attribute>`` with inputs ``<subgraph>:in<k>``; unnamed dims
``unk__<n>``; graphs have no doc string. Names in ``keep`` (graph inputs and outputs, tables) stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx

_UNK = "unk__"


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, graph in enumerate(attr.graphs):
                yield f"{attr.name}{i}", graph


def _needs(node: onnx.NodeProto) -> list[str]:
    """The values ``node`` reads: its inputs, then the outer values its subgraphs read, in walk order."""
    names = [name for name in node.input if name]
    for _, sub in _subgraphs(node):
        names += _walk(sub)[1]
    return names


def _substitute(graph: onnx.GraphProto, new: dict[str, str]) -> None:
    """Replace every read of a name in ``new`` (node inputs and subgraph outputs, at any depth), and the
    node outputs so named."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                field[i] = new.get(name, name)
        for _, sub in _subgraphs(node):
            for out in sub.output:
                out.name = new.get(out.name, out.name)
            _substitute(sub, new)


def _settle_identities(graph: onnx.GraphProto, fixed_outputs: bool) -> None:
    """Place the ``Identity`` nodes of ``graph`` (and its subgraphs) by a fixed rule.

    tf2onnx's optimizer keeps an Identity where two outputs of a graph hold one value (a Loop body passes
    a state both on and out), but which of them gets it follows its node order, which varies between
    processes. Here every Identity goes; then the first output holding a value computed in the graph takes
    it from its node, and each other output holding it, or holding a value from elsewhere (an input, an
    initializer, an outer scope), gets an Identity of it. With ``fixed_outputs`` (the main graph) the
    outputs keep their names; a subgraph's outputs are named after their values.
    """
    identities = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def root(name: str) -> str:
        while name in identities:
            name = identities[name]
        return name

    nodes = [n for n in graph.node if n.op_type != "Identity"]
    del graph.node[:]
    graph.node.extend(nodes)
    _substitute(graph, {name: root(name) for name in identities})
    produced = {out for node in graph.node for out in node.output}
    holder: dict[str, str] = {}
    for i, out in enumerate(graph.output):
        value = root(out.name)
        if value in produced and value not in holder:
            if fixed_outputs:
                _substitute(graph, {value: out.name})
            holder[value] = out.name if fixed_outputs else value
            out.name = holder[value]
        else:
            name = out.name if fixed_outputs else f"{graph.name}.identity_{i}"
            graph.node.append(onnx.helper.make_node("Identity", [holder.get(value, value)], [name]))
            out.name = name
    for node in graph.node:
        for _, sub in _subgraphs(node):
            _settle_identities(sub, fixed_outputs=False)


def _walk(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[str]]:
    """The nodes of ``graph`` in depth-first post-order from its outputs, and the names it reads from
    outer scopes, in the order the walk first needs them."""
    producers = {out: node for node in graph.node for out in node.output if out}
    local = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    order: list[onnx.NodeProto] = []
    outer: list[str] = []
    seen: set[int] = set()

    def push(name: str, stack: list[tuple[onnx.NodeProto, Iterator[str]]]) -> None:
        node = producers.get(name)
        if node is None:
            if name not in local and name not in outer:
                outer.append(name)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, iter(_needs(node))))

    for out in graph.output:
        stack: list[tuple[onnx.NodeProto, Iterator[str]]] = []
        push(out.name, stack)
        while stack:
            _, pending = stack[-1]
            name = next(pending, None)
            if name is None:
                order.append(stack.pop()[0])
            else:
                push(name, stack)
    return order, outer


class _Names:
    """The new name of every old one; fresh names never collide with a kept one."""

    def __init__(self, keep: Iterable[str]) -> None:
        self.new: dict[str, str] = {name: name for name in keep}
        self.taken = set(self.new.values())
        self.counts: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        while True:
            n = self.counts.get(base, 0)
            self.counts[base] = n + 1
            name = f"{base}_{n}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def name(self, old: str, new: str) -> None:
        """Rename ``old`` (unless it is named already) to ``new``, or ``<new>_<n>`` if that is taken."""
        if old and old not in self.new:
            self.new[old] = new if new not in self.taken else self.fresh(new)
            self.taken.add(self.new[old])

    def number(self, old: str, base: str) -> None:
        """Rename ``old`` (unless it is named already) to the next free ``<base>_<n>``."""
        if old and old not in self.new:
            self.new[old] = self.fresh(base)

    def __call__(self, old: str) -> str:
        return self.new.get(old, old)


def _name_graph(graph: onnx.GraphProto, names: _Names, prefix: str) -> None:
    """Choose the new names of everything ``graph`` defines, in walk order; reorder its nodes and
    initializers by the walk."""
    order, _ = _walk(graph)
    for k, value in enumerate(graph.input):
        names.name(value.name, f"{prefix}:in{k}")
    first_use: dict[str, int] = {}
    for node in order:
        for name in _needs(node):
            first_use.setdefault(name, len(first_use))
    inits = sorted(graph.initializer, key=lambda i: first_use.get(i.name, len(first_use)))
    for init in inits:
        names.number(init.name, "const")
    for node in order:
        node.name = names.fresh(node.op_type)
        for k, out in enumerate(node.output):
            names.name(out, f"{node.name}:{k}")
        for attribute, sub in _subgraphs(node):
            sub.name = f"{node.name}.{attribute}"
            _name_graph(sub, names, sub.name)
    del graph.node[:]
    graph.node.extend(order)
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _apply(graph: onnx.GraphProto, names: _Names) -> None:
    """Rename every reference in ``graph`` and its subgraphs; value infos follow the node order. The doc
    strings tf2onnx writes (``converted from __inference_serve_<counter>``) go."""
    graph.ClearField("doc_string")
    for collection in (graph.input, graph.output, graph.initializer, graph.value_info):
        for item in collection:
            item.name = names(item.name)
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                field[i] = names(name)
        attributes = sorted(node.attribute, key=lambda a: a.name)
        del node.attribute[:]
        node.attribute.extend(attributes)
        for _, sub in _subgraphs(node):
            _apply(sub, names)
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}
    infos = sorted(graph.value_info, key=lambda v: (position.get(v.name, len(position)), v.name))
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for node in graph.node:
        for _, sub in _subgraphs(node):
            yield from _value_infos(sub)


def _name_unknown_dims(graph: onnx.GraphProto) -> None:
    """``unk__<n>`` for every dim named ``unk__...``, numbered in order of first appearance."""
    renamed: dict[str, str] = {}
    for value in _value_infos(graph):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param.startswith(_UNK):
                dim.dim_param = renamed.setdefault(dim.dim_param, f"{_UNK}{len(renamed)}")


def canonicalize(model: onnx.ModelProto, keep: Iterable[str], graph_name: str) -> None:
    """Rename and order ``model``'s nodes, values, initializers, subgraphs and unnamed dims from a walk of
    the graph (see the module); names in ``keep`` (and the graph inputs and outputs) stay. Opset imports
    are sorted by domain and the graph is named ``graph_name``."""
    graph = model.graph
    _settle_identities(graph, fixed_outputs=True)
    names = _Names([*keep, *(v.name for v in graph.input), *(v.name for v in graph.output)])
    _name_graph(graph, names, graph_name)
    _apply(graph, names)
    _name_unknown_dims(graph)
    graph.name = graph_name
    opsets = sorted(model.opset_import, key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
