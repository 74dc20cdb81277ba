"""Weight layout before quantizing: every weight a quantizer can see, and each stored once.

ONNX Runtime's quantizers only quantize a MatMul whose weight is an initializer. torch's exporter writes
a tied LM head as `MatMul(x, Transpose(embedding))`, so the largest matrix of a small LLM (SmolLM2's
49152 x 576 embedding: a fifth of the model) stays float, and is transposed again at every load. Two
exact rewrites fix that:

- `fold_transposed_weights`: `Transpose(initializer)` feeding MatMuls becomes a transposed initializer.
- `share_tied_embedding`: the embedding lookup `Gather(W, ids)` reads the head's `W.T` instead,
  `Transpose(Gather(W.T, ids, axis=1))`, so a tied weight is stored, and quantized, once.

Both change the graph, never its function: the float model's outputs are bit-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fold_transposed_weights(model: onnx.ModelProto) -> int:
    """Replace main-graph `Transpose(initializer)` nodes whose readers are all MatMuls; returns how many."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    readers = _readers(graph)
    folded = 0
    for node in list(graph.node):
        if (node.op_type != "Transpose" or node.input[0] not in weights
                or not readers[node.output[0]] or any(r.op_type != "MatMul" for r in readers[node.output[0]])):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(weights[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)),
                                                         node.output[0]))
        graph.node.remove(node)
        folded += 1
    _drop_unread(graph)
    return folded


def share_tied_embedding(model: onnx.ModelProto) -> int:
    """Point each `Gather(W, ids)` (axis 0, 2-D W) at a MatMul weight equal to `W.T`; returns how many."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    shared = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in weights or _axis(node) != 0:
            continue
        table = weights[node.input[0]]
        head = _transposed_twin(table, [weights[name] for name in matmul_weights])
        if head is None:
            continue
        index = list(graph.node).index(node)
        columns = f"{node.output[0]}/columns"
        rank = _rank(graph, node.input[1])
        if rank is None:
            continue
        lookup = helper.make_node("Gather", [head.name, node.input[1]], [columns], axis=1,
                                  name=f"{node.name}/columns")
        rows = helper.make_node("Transpose", [columns], [node.output[0]], name=f"{node.name}/rows",
                                perm=[*range(1, rank + 1), 0])  # (D, *ids) -> (*ids, D)
        graph.node.remove(node)
        graph.node.insert(index, rows)
        graph.node.insert(index, lookup)
        shared += 1
    _drop_unread(graph)
    return shared


def _transposed_twin(table: onnx.TensorProto, candidates: list[onnx.TensorProto]) -> onnx.TensorProto | None:
    if len(table.dims) != 2:
        return None
    shape = [table.dims[1], table.dims[0]]
    same_shape = [c for c in candidates if list(c.dims) == shape and c.data_type == table.data_type]
    if not same_shape:
        return None
    array = numpy_helper.to_array(table)
    return next((c for c in same_shape if np.array_equal(numpy_helper.to_array(c), array.T)), None)


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    """Rank of a graph input (token ids are one); None when it is not declared there."""
    for value in graph.input:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for output in graph.output:
        readers.setdefault(output.name, []).append(onnx.NodeProto(op_type="graph output"))
    return readers


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Initializers nothing reads any more (the untransposed original, the untied table)."""
    read = {name for node in graph.node for name in node.input} | _subgraph_reads(graph)
    read |= {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= {name for inner in sub.node for name in inner.input} | _subgraph_reads(sub)
    return names
