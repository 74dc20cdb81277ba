"""Per-op parity table: the PyTorch reference of every registered edgekit op vs ONNX Runtime running its
function body (`single_op_model`), one row per sample the op declares (`OpDef.samples`), torchlib style.

Rows come from the registry: an op without samples fails `test_every_op_has_samples`, so a new op is
tested the day it lands. ORT runs once with graph optimization off (a fusion cannot hide a wrong body)
and once with every optimization on (a fusion cannot break a right one). Every output is compared.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgekit.runtime_ops import DOMAIN, DOMAIN_OPSET, ONNX_OPSET, all_ops, get_op
from edgekit.runtime_ops.attach import OPS_METADATA_KEY, single_op_model

OPT_LEVELS = {"opt_disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "opt_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@functools.lru_cache(maxsize=None)
def samples(op_name: str):
    return tuple(get_op(op_name).samples())


ROWS = [pytest.param(op.name, i, id=f"{op.name}-{sample.name}")
        for op in all_ops() for i, sample in enumerate(samples(op.name))]


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


@functools.lru_cache(maxsize=None)
def _reference(op_name: str, index: int) -> tuple[np.ndarray, ...]:
    sample = samples(op_name)[index]
    with torch.no_grad():
        return tuple(t.numpy() for t in as_tuple(get_op(op_name)(*sample.inputs(), **sample.attrs)))


def _run_ort(op_name: str, index: int, level) -> list[np.ndarray]:
    op, sample = get_op(op_name), samples(op_name)[index]
    inputs = sample.inputs()
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    model = single_op_model(op, sample.attrs, inputs)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: x.numpy() for name, x in zip(op.inputs, inputs)})


def test_every_op_has_samples():
    missing = [op.name for op in all_ops() if not samples(op.name)]
    assert not missing, f"add parity samples for {missing}"


def test_registry_is_not_empty():
    assert "DHSAAttention" in [op.name for op in all_ops()]


@pytest.mark.parametrize("level", OPT_LEVELS.values(), ids=OPT_LEVELS.keys())
@pytest.mark.parametrize("op_name, index", ROWS)
def test_onnx_runtime_matches_reference(op_name, index, level):
    atol = samples(op_name)[index].atol
    expected = _reference(op_name, index)
    got = _run_ort(op_name, index, level)
    assert len(got) == len(expected) == len(get_op(op_name).outputs)
    for name, g, e in zip(get_op(op_name).output_names, got, expected):
        assert g.shape == e.shape, name
        assert g.dtype == e.dtype, name
        assert np.isfinite(e.astype(np.float64)).all(), f"the reference produced NaN/inf in {name}"
        assert np.isfinite(g.astype(np.float64)).all(), f"ONNX Runtime produced NaN/inf in {name}"
        if np.issubdtype(e.dtype, np.integer) or e.dtype == bool:
            np.testing.assert_array_equal(g, e, err_msg=name)
        else:
            np.testing.assert_allclose(g, e, rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_function_proto_passes_checker(op):
    proto = op.function_proto()
    assert (proto.domain, proto.name) == (DOMAIN, op.name)
    assert f"version {op.version}" in proto.doc_string
    declared = {a.name for a in proto.attribute_proto} | set(proto.attribute)
    assert declared == {a.name for a in op.attributes}
    assert list(proto.input) == list(op.inputs) and len(proto.output) == len(op.outputs)
    onnx.checker.check_function(proto)


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_single_op_model_passes_checker(op):
    sample = samples(op.name)[0]
    model = single_op_model(op, sample.attrs, sample.inputs())
    onnx.checker.check_model(model, full_check=True)
    imports = {o.domain: o.version for o in model.opset_import}
    assert imports == {"": ONNX_OPSET, DOMAIN: DOMAIN_OPSET}
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, op.name)]
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == (DOMAIN, op.name)
    assert {a.name for a in node.attribute} == {a.name for a in op.attributes}
    assert {p.key: p.value for p in model.metadata_props}[OPS_METADATA_KEY] == f'{{"{op.name}": {op.version}}}'
