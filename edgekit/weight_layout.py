"""Weight layout before quantizing: every weight a quantizer can see, and each stored once.

ONNX Runtime's quantizers only quantize a MatMul whose weight is an initializer. torch's exporter writes
a tied LM head as `MatMul(x, Transpose(embedding))`, so the largest matrix of a small LLM (SmolLM2's
49152 x 576 embedding: a fifth of the model) stays float, and is transposed again at every load. Two
exact rewrites fix that:

- `fold_transposed_weights`: `Transpose(initializer)` feeding MatMuls becomes a transposed initializer.
- `share_tied_embedding`: the embedding lookup `Gather(W, ids)` reads the head's `W.T` instead,
  `Transpose(Gather(W.T, ids, axis=1))`, so a tied weight is stored, and quantized, once.

Both change the graph, never its function: the float model's outputs are bit-identical.

`export` writes that layout from the start (`store_tied_head_once`, on the onnx-ir model before its
weights are streamed): otherwise ONNX Runtime constant-folds the head's `Transpose(embedding)` into a
second copy of the table on every load (671 MB for Gemma-3-270M's 262K-row vocabulary).

After MatMulNBits has quantized the head, `lookup_quantized_head` makes the lookup read the head's
packed blocks too (`GatherBlockQuantized` on the same initializer), so the table is stored once, quantized
once, and every row the lookup returns is exactly the row the head multiplies by. (ONNX Runtime's
GatherBlockQuantized returns zero rows for ids out of range where Gather fails; edgekit's Session and
Generator check ids against the vocabulary before running.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

CHUNK_BYTES = 16 << 20  # a transposed table is written this much at a time: no whole second copy in memory


def store_tied_head_once(model: ir.Model) -> int:
    """`MatMul(x, Transpose(W))` with `Gather(W, ids)` reading the same initializer becomes
    `MatMul(x, W.T)` and `Transpose(Gather(W.T, ids, axis=1))`, `W.T` an initializer transposed as it is
    written; returns how many tables were laid out so."""
    graph, laid_out = model.graph, 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        table = node.inputs[0]
        if table is None or not table.is_initializer() or table.const_value is None or len(table.shape) != 2:
            continue
        readers = [n for n, _ in node.outputs[0].uses()]
        lookups = [n for n, i in table.uses() if n is not node and n.op_type == "Gather" and i == 0
                   and n.attributes.get_int("axis", 0) == 0 and n.inputs[1].shape is not None]
        if (not readers or any(n.op_type != "MatMul" for n in readers) or node.outputs[0].is_graph_output()
                or len(table.uses()) != 1 + len(lookups) or not lookups
                or list(node.attributes.get_ints("perm", [1, 0])) != [1, 0]):
            continue
        rows, columns = table.shape
        head = ir.Value(name=f"{table.name}.T", shape=ir.Shape([columns, rows]), type=ir.TensorType(table.dtype),
                        const_value=_transposed(table.const_value))
        graph.register_initializer(head)
        node.outputs[0].replace_all_uses_with(head)
        graph.remove(node, safe=True)
        for gather in lookups:
            rank = len(gather.inputs[1].shape)
            picked = ir.node("Gather", [head, gather.inputs[1]], attributes={"axis": 1}, name=f"{gather.name}/columns")
            rows_out = ir.node("Transpose", picked.outputs, attributes={"perm": [*range(1, rank + 1), 0]},
                               name=f"{gather.name}/rows")
            graph.insert_before(gather, [picked, rows_out])
            gather.outputs[0].replace_all_uses_with(rows_out.outputs[0], replace_graph_outputs=True)
            graph.remove(gather, safe=True)
        graph.initializers.pop(table.name)
        laid_out += 1
    return laid_out


class _RowChunks(ir.Tensor):
    """A (possibly strided) array written a few rows at a time."""

    def tofile(self, file) -> None:
        array = self.numpy()
        rows = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, array.shape[0], rows):
            np.ascontiguousarray(array[start:start + rows]).tofile(file)


def _transposed(tensor: ir.TensorProtocol) -> ir.LazyTensor:
    rows, columns = tensor.shape
    return ir.LazyTensor(lambda: _RowChunks(tensor.numpy().T), dtype=tensor.dtype,
                         shape=ir.Shape([columns, rows]))


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


def lookup_quantized_head(model: onnx.ModelProto) -> int:
    """Turn each `Transpose(Gather(W.T, ids, axis=1))` whose `W.T` a symmetric MatMulNBits also holds into
    `GatherBlockQuantized` over that MatMulNBits' blocks and scales; returns how many."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    readers = _readers(graph)
    heads = [n for n in graph.node if n.domain == "com.microsoft" and n.op_type == "MatMulNBits"
             and (len(n.input) < 4 or not n.input[3]) and n.input[1] in weights and n.input[2] in weights]
    shared = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or _axis(node) != 1 or node.input[0] not in weights:
            continue
        table = weights[node.input[0]]
        after = readers.get(node.output[0], [])
        rows = after[0] if len(after) == 1 and after[0].op_type == "Transpose" else None
        perm = next((list(a.ints) for a in rows.attribute if a.name == "perm"), []) if rows else []
        if len(table.dims) != 2 or not perm or perm != [*range(1, len(perm)), 0]:
            continue
        same_shape = [h for h in heads if (_attrs(h)["N"], _attrs(h)["K"]) == (table.dims[1], table.dims[0])]
        rows_of_table = numpy_helper.to_array(table).T if same_shape else None  # (N, K), converted once
        head = next((h for h in same_shape if _holds(h, weights, rows_of_table)), None)
        if head is None:
            continue
        attrs = _attrs(head)
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        blocks = -(-k // block)
        name = rows.output[0]
        scales = helper.make_tensor(f"{name}/scales_shape", onnx.TensorProto.INT64, [3], [n, blocks, 1])
        width = helper.make_tensor(f"{name}/row_shape", onnx.TensorProto.INT64, [len(perm)],
                                   [0] * (len(perm) - 1) + [blocks * block])  # (*ids, blocks, block) -> (*ids, K')
        graph.initializer.extend([scales, width])
        new = [helper.make_node("Reshape", [head.input[2], scales.name], [f"{name}/scales"], name=f"{name}/scales"),
               helper.make_node("GatherBlockQuantized", [head.input[1], node.input[1], f"{name}/scales"],
                                [f"{name}/blocks"], name=f"{name}/lookup", domain="com.microsoft",
                                bits=attrs["bits"], block_size=block, gather_axis=0, quantize_axis=2),
               helper.make_node("Reshape", [f"{name}/blocks", width.name],
                                [name if blocks * block == k else f"{name}/padded"], name=f"{name}/rows")]
        if blocks * block != k:  # MatMulNBits pads K to whole blocks: drop the padding
            ends = helper.make_tensor(f"{name}/k", onnx.TensorProto.INT64, [1], [k])
            starts = helper.make_tensor(f"{name}/start", onnx.TensorProto.INT64, [1], [0])
            axes = helper.make_tensor(f"{name}/axis", onnx.TensorProto.INT64, [1], [-1])
            graph.initializer.extend([ends, starts, axes])
            new.append(helper.make_node("Slice", [f"{name}/padded", starts.name, ends.name, axes.name], [name],
                                        name=f"{name}/unpad"))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.remove(rows)
        for offset, added in enumerate(new):
            graph.node.insert(index + offset, added)
        shared += 1
    if shared and "com.microsoft" not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _drop_unread(graph)
    return shared


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _holds(head: onnx.NodeProto, weights: dict[str, onnx.TensorProto], table: np.ndarray) -> bool:
    """Whether MatMulNBits `head` (no zero points: 2^(bits-1)) dequantizes to `table` (N, K) within one step."""
    attrs = _attrs(head)
    n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    if table.shape != (n, k) or bits not in (4, 8):
        return False
    packed = numpy_helper.to_array(weights[head.input[1]]).reshape(n, -1)
    if bits == 4:
        packed = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
    scales = numpy_helper.to_array(weights[head.input[2]]).reshape(n, -1, 1).astype(np.float32)
    values = (packed.astype(np.float32) - 2 ** (bits - 1)).reshape(n, scales.shape[1], block) * scales
    error = np.abs(values.reshape(n, -1)[:, :k] - table)
    step = np.abs(scales).reshape(n, -1).repeat(block, axis=1)[:, :k]
    return bool(np.all(error <= step * 1.001 + 1e-6))  # rounding, and the clip of a block's largest weight


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
