"""Per-op parity table: the PyTorch reference of every registered edgekit op vs ONNX Runtime running its
function body (`single_op_model`), one row per shape/attribute case, torchlib style.

Rows come from the registry: an op without a case table fails `test_every_op_has_a_case_table`, so a new
op is tested the day it lands. ORT runs once with graph optimization off (a fusion cannot hide a wrong
body) and once with every optimization on (a fusion cannot break a right one).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgekit.runtime_ops import DOMAIN, DOMAIN_VERSION, ONNX_OPSET, all_ops, get_op
from edgekit.runtime_ops.attach import single_op_model


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity row: input shapes (B, Hq, Hkv, S, D), op attributes, absolute tolerance."""

    name: str
    shape: tuple[int, int, int, int, int]
    attrs: dict = dataclasses.field(default_factory=dict)
    atol: float = 1e-5

    def inputs(self, seed: int = 0) -> list[torch.Tensor]:
        B, Hq, Hkv, S, D = self.shape
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(B, Hq, S, D, generator=g),  # query (B, Hq, S, D)
                torch.randn(B, Hkv, S, D, generator=g),  # key   (B, Hkv, S, D)
                torch.randn(B, Hkv, S, D, generator=g)]  # value (B, Hkv, S, D)


# Small DHSA attributes so that S of 50..600 runs the sparse path: budget 64 < S.
SMALL = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)


def _dhsa(name, B, Hq, Hkv, S, D, atol=1e-5, **attrs) -> Case:
    return Case(name, (B, Hq, Hkv, S, D), {**SMALL, **attrs}, atol)


DHSA_CASES = [
    # sequence lengths around the block, chunk and budget sizes
    _dhsa("S1", 1, 2, 1, 1, 8),
    _dhsa("S_lt_block", 1, 4, 2, 5, 16),
    _dhsa("S_eq_budget", 1, 4, 2, 64, 16),
    _dhsa("S_budget_plus_1", 1, 4, 2, 65, 16),
    _dhsa("ragged_S150", 1, 4, 2, 150, 16),
    _dhsa("ragged_S257_block32_chunk24", 1, 4, 2, 257, 16, block_size=32, chunk_size=24, budget_tokens=96),
    _dhsa("S600_block32_budget128", 1, 4, 2, 600, 32, block_size=32, chunk_size=16, budget_tokens=128,
          sink_tokens=16, local_tokens=32),
    # the ONNX body attends in Loop steps of ~2048 queries: S = 2100 takes two steps, the last one ragged
    _dhsa("two_loop_steps_S2100", 1, 2, 1, 2100, 8, block_size=32, chunk_size=16, budget_tokens=96,
          sink_tokens=16, local_tokens=32),
    _dhsa("chunk_gt_S", 1, 2, 1, 50, 16, chunk_size=64, block_size=8, budget_tokens=32, sink_tokens=4,
          local_tokens=8),
    _dhsa("chunk1_block1", 1, 2, 1, 50, 8, chunk_size=1, block_size=1, budget_tokens=32),
    _dhsa("minimal_budget", 1, 4, 2, 120, 16, budget_tokens=40),  # = sink + local + block
    _dhsa("default_attrs_dense_path", 1, 4, 2, 100, 16, block_size=128, chunk_size=64, budget_tokens=2048,
          sink_tokens=128, local_tokens=128),
    # grouped-query attention: groups 1, 2, 3, 4; batch 2
    _dhsa("gqa1", 1, 2, 2, 100, 16),
    _dhsa("gqa3", 1, 6, 2, 100, 16),
    _dhsa("gqa4", 1, 4, 1, 100, 16),
    _dhsa("batch2", 2, 4, 2, 130, 16),
    _dhsa("batch2_gqa3", 2, 3, 1, 90, 8),
    # head dims
    _dhsa("D8", 1, 4, 2, 100, 8),
    _dhsa("D24", 1, 4, 2, 100, 24),
    _dhsa("D64", 1, 4, 2, 100, 64),
    # Gemma2 features: softcap, sliding window (larger and smaller than local_tokens / block_size)
    _dhsa("softcap", 1, 4, 2, 150, 16, softcap=2.0),
    _dhsa("window40", 1, 4, 2, 150, 16, sliding_window=40),
    _dhsa("window_lt_local", 1, 4, 2, 150, 16, block_size=8, sliding_window=12),
    _dhsa("window_lt_block", 1, 4, 2, 150, 16, sliding_window=10),
    _dhsa("window_softcap_scale", 1, 4, 2, 200, 16, sliding_window=48, softcap=5.0, scale=0.5),
    _dhsa("scale", 1, 4, 2, 100, 16, scale=0.3),
    # S <= budget: every key is kept (the body's dense branch), with the same Gemma2 features
    _dhsa("full_budget_softcap", 1, 4, 2, 60, 16, softcap=2.0),
    _dhsa("full_budget_window_lt_block", 1, 4, 2, 60, 16, sliding_window=10),
    _dhsa("full_budget_window_softcap_scale", 2, 6, 2, 64, 16, sliding_window=30, softcap=5.0, scale=0.5),
    # chunking and representation variants
    _dhsa("fixed_chunks", 1, 4, 2, 150, 16, adaptive_chunks=0),
    _dhsa("plain_mean", 1, 4, 2, 150, 16, length_scaled=0),
    _dhsa("fixed_plain_mean", 1, 4, 2, 150, 16, adaptive_chunks=0, length_scaled=0),
    _dhsa("chunk_size_gt_block", 1, 4, 2, 300, 16, chunk_size=40, budget_tokens=120),
    _dhsa("chunk_size_not_dividing_S", 1, 4, 2, 301, 16, chunk_size=13, block_size=20, budget_tokens=90),
    # chunk_score=0: the paper's mean representations (length-scaled or plain), fixed or adaptive chunks
    _dhsa("mean_score", 1, 4, 2, 150, 16, chunk_score=0),
    _dhsa("mean_score_ragged_gqa3_batch2", 2, 6, 2, 257, 16, chunk_score=0, block_size=32, chunk_size=24,
          budget_tokens=96),
    _dhsa("mean_score_plain_fixed", 1, 4, 2, 150, 16, chunk_score=0, length_scaled=0, adaptive_chunks=0),
    _dhsa("mean_score_plain_two_steps", 1, 2, 1, 2100, 8, chunk_score=0, length_scaled=0, block_size=32,
          chunk_size=16, budget_tokens=96, sink_tokens=16, local_tokens=32),
    _dhsa("mean_score_window_softcap", 1, 4, 2, 200, 16, chunk_score=0, sliding_window=48, softcap=5.0),
    # chunk_score=1: the max-logit bound alone
    _dhsa("bound_score", 1, 4, 2, 150, 16, chunk_score=1),
    _dhsa("bound_score_ragged_gqa3_batch2", 2, 6, 2, 257, 16, chunk_score=1, block_size=32, chunk_size=24,
          budget_tokens=96),
    _dhsa("bound_score_fixed_two_steps", 1, 2, 1, 2100, 8, chunk_score=1, adaptive_chunks=0, block_size=32,
          chunk_size=16, budget_tokens=96, sink_tokens=16, local_tokens=32),
    _dhsa("no_sink", 1, 4, 2, 150, 16, sink_tokens=0),
    _dhsa("no_local", 1, 4, 2, 150, 16, local_tokens=0),
    _dhsa("no_sink_no_local", 1, 4, 2, 150, 16, sink_tokens=0, local_tokens=0, budget_tokens=32),
]

CASES: dict[str, list[Case]] = {"DHSAAttention": DHSA_CASES}

OPT_LEVELS = {"opt_disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "opt_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

ROWS = [pytest.param(op.name, i, id=f"{op.name}-{case.name}")
        for op in all_ops() for i, case in enumerate(CASES.get(op.name, []))]


@functools.lru_cache(maxsize=None)
def _reference(op_name: str, index: int) -> np.ndarray:
    case = CASES[op_name][index]
    with torch.no_grad():
        return get_op(op_name)(*case.inputs(), **case.attrs).numpy()


def _run_ort(op_name: str, case: Case, level) -> np.ndarray:
    op = get_op(op_name)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(single_op_model(op, case.attrs).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {name: x.numpy() for name, x in zip(op.inputs, case.inputs())}
    return session.run(None, feeds)[0]


def test_every_op_has_a_case_table():
    missing = [op.name for op in all_ops() if not CASES.get(op.name)]
    assert not missing, f"add parity rows for {missing} to CASES"


def test_registry_is_not_empty():
    assert "DHSAAttention" in [op.name for op in all_ops()]


@pytest.mark.parametrize("level", OPT_LEVELS.values(), ids=OPT_LEVELS.keys())
@pytest.mark.parametrize("op_name, index", ROWS)
def test_onnx_runtime_matches_reference(op_name, index, level):
    case = CASES[op_name][index]
    expected = _reference(op_name, index)
    got = _run_ort(op_name, case, level)
    assert got.shape == expected.shape
    assert np.isfinite(expected).all(), "the reference produced NaN/inf"
    assert np.isfinite(got).all(), "ONNX Runtime produced NaN/inf"
    np.testing.assert_allclose(got, expected, rtol=0, atol=case.atol)


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_function_proto_passes_checker(op):
    proto = op.function_proto()
    assert (proto.domain, proto.name) == (DOMAIN, op.name)
    declared = {a.name for a in proto.attribute_proto} | set(proto.attribute)
    assert declared == {a.name for a in op.attributes}
    assert list(proto.input) == list(op.inputs) and len(proto.output) == len(op.outputs)
    onnx.checker.check_function(proto)


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.name)
def test_single_op_model_passes_checker(op):
    case = CASES[op.name][0]
    model = single_op_model(op, case.attrs)
    onnx.checker.check_model(model, full_check=True)
    imports = {o.domain: o.version for o in model.opset_import}
    assert imports == {"": ONNX_OPSET, DOMAIN: DOMAIN_VERSION}
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, op.name)]
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == (DOMAIN, op.name)
    assert {a.name for a in node.attribute} == {a.name for a in op.attributes}
