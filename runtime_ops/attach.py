"""Attach edgekit function bodies to ONNX models, so stock ONNX Runtime can run `edgekit.*` nodes."""

from __future__ import annotations

import collections
import json
from typing import Iterator, Sequence

import onnx
import torch
from onnx import helper

from edgekit.errors import ModelLoadError

from .registry import DOMAIN, DOMAIN_OPSET, ONNX_OPSET, VERSION_KEY, OpDef, get_op

IR_VERSION = 10  # what onnxruntime 1.20+ accepts; onnx 1.23 would otherwise write a newer one
OPS_METADATA_KEY = "edgekit.ops"  # model metadata: {op name: version} of the edgekit ops it uses


def all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: the main graph, Loop/If/Scan bodies at any depth, and local functions."""
    pending = collections.deque([*model.graph.node, *(n for f in model.functions for n in f.node)])
    while pending:
        node = pending.popleft()
        yield node
        for attr in node.attribute:
            for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                pending.extend(graph.node)


def node_version(node: onnx.NodeProto) -> int | None:
    props = {p.key: p.value for p in node.metadata_props}
    return int(props[VERSION_KEY]) if VERSION_KEY in props else None


def edgekit_ops_used(model: onnx.ModelProto) -> dict[str, int]:
    """{op name: version} of every edgekit op the model calls anywhere, in first-use order.

    A node without a recorded version takes the model's `edgekit.ops` entry, else the registry's.
    """
    recorded = recorded_versions(model)
    used: dict[str, int] = {}
    for node in all_nodes(model):
        if node.domain == DOMAIN and node.op_type not in used:
            version = node_version(node) or recorded.get(node.op_type) or get_op(node.op_type).version
            used[node.op_type] = version
    return used


def recorded_versions(model: onnx.ModelProto) -> dict[str, int]:
    props = {p.key: p.value for p in model.metadata_props}
    return {k: int(v) for k, v in json.loads(props.get(OPS_METADATA_KEY, "{}")).items()}


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the body of every edgekit op the model uses, the `edgekit` opset import and `edgekit.ops`.

    A body already in the model is kept (an old file keeps the body it was exported with). A missing body
    is taken from the registry only if the node's version is the registry's: another version's body
    cannot be re-created, and running the current one would silently change the model's semantics.
    """
    used = edgekit_ops_used(model)
    present = {f.name for f in model.functions if f.domain == DOMAIN}
    for name, version in used.items():
        if name in present:
            continue
        op = get_op(name)
        if version != op.version:
            raise ModelLoadError(f"the model uses {op.qualified_name} version {version} without its function "
                                 f"body; this edgekit has version {op.version}: re-export the model")
        model.functions.append(op.function_proto())
    imports = {o.domain for o in model.opset_import}
    if used and DOMAIN not in imports:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_OPSET))
    if used:
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       OPS_METADATA_KEY: json.dumps(used)})
    model.ir_version = IR_VERSION
    return model


_ONNX_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
               torch.int64: onnx.TensorProto.INT64, torch.int32: onnx.TensorProto.INT32,
               torch.bool: onnx.TensorProto.BOOL}


def onnx_type(dtype: torch.dtype) -> int:
    return _ONNX_TYPES[dtype]


def single_op_model(op: OpDef, attrs: dict, example: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """A model holding one edgekit node, inputs typed like `example` with symbolic dims: the unit under test."""
    resolved = op.resolve(**attrs)
    inputs = [helper.make_tensor_value_info(n, onnx_type(x.dtype), [f"{n}_{i}" for i in range(x.dim())])
              for n, x in zip(op.inputs, example)]
    ranks = [len(shape) for shape in op.output_shapes([x.shape for x in example], resolved)]
    outputs = [helper.make_tensor_value_info(o.name, onnx_type(o.torch_dtype(example[0])),
                                             [f"{o.name}_{i}" for i in range(rank)])
               for o, rank in zip(op.outputs, ranks)]
    onnx_attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
    node = helper.make_node(op.name, list(op.inputs), list(op.output_names), domain=DOMAIN, **onnx_attrs)
    helper.set_metadata_props(node, {VERSION_KEY: str(op.version)})
    graph = helper.make_graph([node], f"{op.name}_only", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return attach_functions(model)
