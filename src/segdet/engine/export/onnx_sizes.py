"""An ONNX graph's size arithmetic in float64, as PyTorch computes it.

Under ``torch.export`` a resize that keeps the aspect ratio computes its output size from the input's
with Python numbers: ``s = min(min_size / min(h, w), max_size / max(h, w))``, then ``floor(h s)`` and
``floor(w s)`` (:func:`segdet.models.detection.transform.resize_scale`), all in float64 as torchvision
does. ``torch.onnx.export`` writes that arithmetic in float32 (``Cast(to=FLOAT)`` of the integer sides,
``Div``, ``Min``, ``Mul``, ``Cast(to=INT64)``), and float32 lands one pixel short for ~5 % of sides:
``97 * (256 / 97)`` is 255.99998 in float32, 256 in float64.

:func:`promote_size_arithmetic` recomputes every such size in float64. A *sized* value is float
arithmetic on integers: a ``Cast`` of an integer to float32, then any node of :data:`SCALAR_OPS` whose
inputs are all sized values or float32 scalar constants that are integers (a constant that is not may
already be its original's rounding). Each ``Cast`` of a sized value back to an integer type (a size)
gets a float64 copy of the computation it reads, the constants as float64 copies; the float32 nodes
stay for the values' other readers (e.g. the same ``h`` as a float in a box scale, which PyTorch
computes in float32 too) and are removed when nothing else reads them. IEEE-754 ``Div``, ``Mul``,
``Min`` in float64 and a truncating cast are what Python does, so the rewritten graph gives PyTorch's
sizes exactly.
"""

from __future__ import annotations

import numpy as np

#: the ONNX ops a size computation is made of (elementwise on scalars)
SCALAR_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Min", "Max", "Neg", "Abs", "Floor", "Ceil"})

# onnx.TensorProto data types (plain numbers: the module imports onnx only when it runs)
FLOAT, DOUBLE = 1, 11
INTEGERS = frozenset({2, 3, 4, 5, 6, 7, 12, 13})  # uint8, int8, uint16, int16, int32, int64, uint32, uint64


def promote_size_arithmetic(model) -> int:
    """Recompute ``model``'s (an ``onnx.ModelProto``) sizes in float64, in place (module docstring);
    the number of float64 nodes added.

    ``sized``: each sized value -> the node making it, found in the graph's topological order;
    ``copies``: each sized value a size reads (directly or through others) -> its float64 copy's name;
    ``added``: original node -> its float64 copy, inserted right after it (inputs before readers)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    types = _elem_types(graph)
    constants = {k: v for k, v in _scalar_constants(graph).items() if _integral(v)}
    sized: dict[str, object] = {}
    for node in graph.node:
        if node.op_type == "Cast" and _cast_to(node) == FLOAT and types.get(node.input[0]) in INTEGERS:
            sized[node.output[0]] = node
        elif node.op_type in SCALAR_OPS and any(i in sized for i in node.input):
            if all(i in sized or i in constants for i in node.input):
                sized[node.output[0]] = node

    copies: dict[str, str] = {}
    added: dict[int, object] = {}
    initializers = {init.name for init in graph.initializer}

    def wide(name: str) -> str:
        """The float64 copy of sized value or constant ``name``."""
        if name in copies:
            return copies[name]
        copy = f"{name}_float64"
        if name in constants:
            if copy not in initializers:
                graph.initializer.append(numpy_helper.from_array(constants[name].astype(np.float64), copy))
                initializers.add(copy)
        else:
            node = sized[name]
            if node.op_type == "Cast":
                new = helper.make_node("Cast", [node.input[0]], [copy], to=DOUBLE)
            else:
                new = helper.make_node(node.op_type, [wide(i) for i in node.input], [copy])
                new.attribute.extend(node.attribute)
            added[id(node)] = new
        copies[name] = copy
        return copy

    for node in graph.node:
        if node.op_type == "Cast" and _cast_to(node) in INTEGERS and node.input[0] in sized:
            node.input[0] = wide(node.input[0])
    if not added:
        return 0
    nodes = []
    for node in graph.node:
        nodes += [node, added[id(node)]] if id(node) in added else [node]
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_unread(graph, {*sized, *constants}, set(constants))
    return len(added)


def _remove_unread(graph, values: set[str], constants: set[str]) -> None:
    """Remove the nodes making ``values`` that nothing reads any more (readers first, so that a chain
    goes whole), the ``constants`` initialisers nothing reads, and the removed values' ``value_info``."""
    removed = set()
    while True:
        read = {i for node in graph.node for i in [*node.input, *_subgraph_reads(node)]}
        read |= {o.name for o in graph.output}
        unread = [n for n in graph.node if n.output and n.output[0] in values and n.output[0] not in read]
        if not unread:
            break
        for node in unread:
            removed.add(node.output[0])
            graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name in constants and i.name not in read]:
        graph.initializer.remove(init)
    for info in [i for i in graph.value_info if i.name in removed]:
        graph.value_info.remove(info)


def _subgraph_reads(node) -> list[str]:
    """Every value the node's subgraphs (``If`` / ``Loop`` / ``Scan`` bodies) read, outer ones included:
    a subgraph reads the outer graph's values by name, not through the node's inputs."""
    reads = []
    for attribute in node.attribute:
        for graph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
            for inner in graph.node:
                reads += [*inner.input, *_subgraph_reads(inner)]
    return reads


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _integral(value: np.ndarray) -> bool:
    return value.dtype == np.float32 and value.size == 1 and float(value).is_integer()


def _elem_types(graph) -> dict[str, int]:
    """Element type of every value the graph declares (inputs, outputs, value_info, initialisers)."""
    types = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:  # Cast outputs whose value_info the exporter left out
        if node.op_type == "Cast":
            types.setdefault(node.output[0], _cast_to(node))
    return types


def _scalar_constants(graph) -> dict[str, np.ndarray]:
    """Single-element constants: initialisers and ``Constant`` nodes' values."""
    from onnx import numpy_helper

    found = {}
    for init in graph.initializer:
        if int(np.prod(init.dims)) == 1:
            found[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and int(np.prod(attribute.t.dims)) == 1:
                    found[node.output[0]] = numpy_helper.to_array(attribute.t)
    return found
