"""Attach edgekit function bodies to ONNX models, so stock ONNX Runtime can run `edgekit.*` nodes."""

from __future__ import annotations

import onnx
from onnx import helper

from .registry import DOMAIN, DOMAIN_VERSION, ONNX_OPSET, OpDef, get_op

IR_VERSION = 10  # what onnxruntime 1.20+ accepts; onnx 1.23 would otherwise write a newer one


def edgekit_ops_used(model: onnx.ModelProto) -> list[str]:
    """Names of the edgekit ops a model's main graph calls, in first-use order."""
    names: list[str] = []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type not in names:
            names.append(node.op_type)
    return names


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function body of every edgekit op the graph uses and the `edgekit` opset import."""
    used = edgekit_ops_used(model)
    present = {(f.domain, f.name) for f in model.functions}
    for name in used:
        proto = get_op(name).function_proto()
        if (proto.domain, proto.name) not in present:
            model.functions.append(proto)
    imports = {o.domain: o for o in model.opset_import}
    if used and DOMAIN not in imports:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = IR_VERSION
    return model


def single_op_model(op: OpDef, attrs: dict, elem_type: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """A model holding one edgekit node with symbolic shapes: the unit under test for op parity."""
    resolved = op.resolve(**attrs)
    inputs = [helper.make_tensor_value_info(n, elem_type, [f"{n}_{d}" for d in "bhsd"]) for n in op.inputs]
    outputs = [helper.make_tensor_value_info(n, elem_type, [f"{n}_{d}" for d in "bhsd"]) for n in op.outputs]
    node = helper.make_node(op.name, list(op.inputs), list(op.outputs), domain=DOMAIN, **resolved)
    graph = helper.make_graph([node], f"{op.name}_only", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return attach_functions(model)
