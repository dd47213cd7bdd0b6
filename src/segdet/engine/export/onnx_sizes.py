"""An ONNX graph's size arithmetic in float64, as PyTorch computes it.

Under ``torch.export`` a resize that keeps the aspect ratio computes its output size from the input's
with Python numbers: ``s = min(min_size / min(h, w), max_size / max(h, w))``, then ``floor(h s)`` and
``floor(w s)`` (:func:`segdet.models.detection.transform.resize_scale`), all in float64 as torchvision
does. ``torch.onnx.export`` writes that arithmetic in float32 (``Cast(to=FLOAT)`` of the integer sides,
``Div``, ``Min``, ``Mul``, ``Cast(to=INT64)``), and float32 lands one pixel short for ~5 % of sides:
``97 * (256 / 97)`` is 255.99998 in float32, 256 in float64.

:func:`promote_size_arithmetic` rewrites each such computation to float64: a *region* starts at a
``Cast`` of an integer scalar to float32, takes in every node of :data:`SCALAR_OPS` that reads a region
value (its other inputs float32 scalar constants, which become float64 copies), and must end only in
``Cast`` s to an integer type: float arithmetic whose results are only ever sizes. Regions that reach
anything else (a float tensor, a box) are left alone, as are those with a constant that is not an
integer (its float32 value may already be the original's rounding). IEEE-754 ``Div``, ``Mul``, ``Min``
in float64 and a truncating cast are what Python does, so the rewritten graph gives PyTorch's sizes
exactly.
"""

from __future__ import annotations

import numpy as np

#: the ONNX ops a size computation is made of (elementwise on scalars)
SCALAR_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Min", "Max", "Neg", "Abs", "Floor", "Ceil"})

# onnx.TensorProto data types (plain numbers: the module imports onnx only when it runs)
FLOAT, DOUBLE = 1, 11
INTEGERS = frozenset({2, 3, 4, 5, 6, 7, 12, 13})  # uint8, int8, uint16, int16, int32, int64, uint32, uint64


def promote_size_arithmetic(model) -> int:
    """Rewrite ``model``'s (an ``onnx.ModelProto``) size arithmetic to float64 in place (module
    docstring); the number of nodes rewritten.

    ``sized``: the float values computed from integer sides (seed casts' outputs, then every
    :data:`SCALAR_OPS` output whose inputs are all such values or integral constants); ``regions``:
    each sized value's component (union-find over the nodes linking them); ``tainted``: the regions with
    a value read by anything but region arithmetic or an integer cast."""
    graph = model.graph
    types = _elem_types(graph)
    constants = {k: v for k, v in _scalar_constants(graph).items() if _integral(v)}
    sized: dict[str, object] = {}  # value -> the node making it
    for node in graph.node:  # topological order: a node's inputs are known before it
        if node.op_type == "Cast" and _cast_to(node) == FLOAT and types.get(node.input[0]) in INTEGERS:
            sized[node.output[0]] = node
        elif node.op_type in SCALAR_OPS and any(i in sized for i in node.input):
            if all(i in sized or i in constants for i in node.input):
                sized[node.output[0]] = node
    regions = _Regions(sized)
    for value, node in sized.items():
        for name in node.input:
            if name in sized:
                regions.join(name, value)
    outputs = {o.name for o in graph.output}
    tainted = set()
    for node in graph.node:
        integer_cast = node.op_type == "Cast" and _cast_to(node) in INTEGERS
        if integer_cast or (node.output and node.output[0] in sized and node is sized[node.output[0]]):
            continue
        tainted |= {regions.find(i) for i in [*node.input, *_subgraph_reads(node)] if i in sized}
    tainted |= {regions.find(o) for o in outputs if o in sized}
    promoted = [value for value in sized if regions.find(value) not in tainted]
    _rewrite(graph, [sized[value] for value in promoted], constants)
    return len(promoted)


class _Regions:
    """Union-find over value names."""

    def __init__(self, names) -> None:
        self.parent = {name: name for name in names}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _rewrite(graph, nodes: list, constants: dict) -> None:
    """``nodes`` in float64: casts to DOUBLE, float64 copies of the constants they read."""
    from onnx import numpy_helper

    names = {init.name for init in graph.initializer}
    for node in nodes:
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to":
                    attribute.i = DOUBLE
            continue
        for k, name in enumerate(node.input):
            if name in constants:
                wide = f"{name}_float64"
                if wide not in names:
                    wide_value = constants[name].astype(np.float64)
                    graph.initializer.append(numpy_helper.from_array(wide_value, wide))
                    names.add(wide)
                node.input[k] = wide
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name in constants and init.name not in used]:
        graph.initializer.remove(init)  # a float32 constant only the rewritten nodes read
    values = {node.output[0] for node in nodes}
    for info in [info for info in graph.value_info if info.name in values]:
        graph.value_info.remove(info)  # their type is now float64: the runtime infers it


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
    for node in graph.node:  # Cast / Constant outputs whose value_info the exporter left out
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
