"""Every edgekit op body in fp16: finite everywhere and close to the fp32 reference.

GPU execution providers run these bodies in fp16 (profile `cuda-fp16`, `quantize --precision fp16`).
A sentinel written for fp32 (3e38) is inf in fp16, and inf turns into NaN as soon as it meets a
subtraction or a zero weight. No GPU here: ONNX Runtime CPU runs the same bodies in fp16 (casting to fp32
where it has no fp16 kernel), which is enough to catch overflowing constants and fp16-unsafe math.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from edgekit.runtime_ops import all_ops
from edgekit.runtime_ops.attach import single_op_model

FP16_ATOL = 2e-2  # fp16 keeps ~3 decimal digits; the samples' outputs are O(1)


def _half(tensors):
    return [t.half() if t.is_floating_point() else t for t in tensors]


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # ORT warns about every fp16 node it casts to fp32 on CPU
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_fp16_body_matches_fp32_reference(op):
    for sample in op.samples():
        inputs = _half(sample.inputs())
        session = _session(single_op_model(op, sample.attrs, inputs))
        got = session.run(None, {name: x.numpy() for name, x in zip(op.inputs, inputs)})
        with torch.no_grad():
            expected = op(*[x.float() if x.is_floating_point() else x for x in inputs], **sample.attrs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, g, e in zip(op.output_names, got, expected):
            e = e.numpy()
            assert g.shape == e.shape, f"{sample.name}: {name}"
            if np.issubdtype(e.dtype, np.integer):
                np.testing.assert_array_equal(g, e, err_msg=f"{sample.name}: {name}")
                continue
            assert g.dtype == np.float16, f"{sample.name}: {name}"
            assert np.isfinite(g).all(), f"{sample.name}: NaN/inf in {name}"
            np.testing.assert_allclose(g.astype(np.float32), e, rtol=0, atol=FP16_ATOL,
                                       err_msg=f"{sample.name}: {name}")


def _every_value_an_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """The op body inlined into the graph, with each top-level intermediate exposed as an output."""
    model = onnx.inliner.inline_local_functions(model)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
                known.add(name)
    return model


def _guarded(name: str, graph: onnx.GraphProto) -> bool:
    """An inf that only reaches IsInf, or a Where that IsInf of it decides, never enters arithmetic."""
    tests = {n.output[0] for n in graph.node if n.op_type == "IsInf" and n.input[0] == name}
    users = [n for n in graph.node if name in n.input or name in _subgraph_inputs(n)]
    return all(n.op_type == "IsInf" or (n.op_type == "Where" and n.input[0] in tests) for n in users)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names the If / Loop bodies of `node` read (outer-scope values included)."""
    names = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names |= set(inner.input) | _subgraph_inputs(inner)
    return names


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_fp16_intermediates_stay_finite(op):
    sample = op.samples()[-1]
    inputs = _half(sample.inputs())
    model = _every_value_an_output(single_op_model(op, sample.attrs, inputs))
    session = _session(model, optimize=False)  # no folding: every constant is computed as written
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {name: x.numpy() for name, x in zip(op.inputs, inputs)})
    overflowed = [name for name, v in zip(names, values)
                  if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all()
                  and not _guarded(name, model.graph)]
    assert not overflowed, f"{op.name} overflows in fp16 at {overflowed}"
