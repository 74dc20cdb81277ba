"""edgekit::CodebookFilter semantics: the reference's meaning, its errors and the body's portability.

ONNX Runtime vs the reference is the parity table's job (tests/test_op_parity.py, rows from `samples()`).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekit.errors import EdgekitError, InvalidAttributeError, ShapeError
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import all_nodes, single_op_model

OP = get_op("CodebookFilter")


def weights(D=24, K=37, code_dim=10, D_out=None, lead=(5,), seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D_out = D if D_out is None else D_out
    return [torch.randn(*lead, D, generator=g), torch.randn(K, D, generator=g) / D ** 0.5,
            torch.randn(K, generator=g), torch.randn(K, code_dim, generator=g),
            torch.randn(D_out, code_dim, generator=g), torch.randn(D_out, generator=g)]


def test_top_k_0_is_the_dense_softmax_bottleneck():
    e, wl, bl, c, wo, bo = weights()
    filtered, probs = OP(e, wl, bl, c, wo, bo, top_k=0)
    expected_p = torch.softmax(torch.relu(e) @ wl.T + bl, dim=-1)
    torch.testing.assert_close(probs, expected_p)
    torch.testing.assert_close(filtered, (expected_p @ c) @ wo.T + bo)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


def test_top_k_equal_to_K_equals_top_k_0():
    inputs = weights(K=37)
    for got, want in zip(OP(*inputs, top_k=37), OP(*inputs, top_k=0)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 5, 16, 36])
def test_every_row_keeps_exactly_k_codes_not_renormalised(k):
    inputs = weights(K=37, lead=(3, 4))
    _, probs = OP(*inputs, top_k=k)
    _, dense = OP(*inputs, top_k=0)
    assert ((probs > 0).sum(-1) == k).all()
    kept = probs > 0
    torch.testing.assert_close(probs[kept], dense[kept], rtol=0, atol=0)  # the softmax values themselves
    assert (probs.sum(-1) <= 1 + 1e-6).all() and (dense.masked_fill(kept, 0).amax(-1) <= probs.amax(-1)).all()


def test_ties_go_to_the_lower_code_index():
    e, wl, bl, c, wo, bo = weights(K=10, lead=(2,))
    wl = torch.zeros_like(wl)  # every code has the same logit
    _, probs = OP(e, wl, torch.zeros(10), c, wo, bo, top_k=3)
    assert (probs > 0).nonzero()[:, 1].tolist() == [0, 1, 2, 0, 1, 2]


def test_leading_dims_of_any_rank_keep_their_shape():
    for lead in [(), (4,), (2, 3), (2, 3, 4)]:
        filtered, probs = OP(*weights(D=12, K=20, D_out=7, lead=lead), top_k=4)
        assert filtered.shape == (*lead, 7) and probs.shape == (*lead, 20)


def test_the_body_uses_matmul_and_no_einsum():
    sample = OP.samples()[0]
    model = single_op_model(OP, sample.attrs, sample.inputs())
    body = [n.op_type for n in all_nodes(model) if n.domain in ("", "ai.onnx")]
    assert "Einsum" not in body and body.count("MatMul") == 3
    assert {"TopK", "ScatterElements", "Softmax", "If"} <= set(body)


def test_ties_in_onnx_runtime_match_the_reference():
    e, wl, bl, c, wo, bo = weights(K=10, lead=(2,))
    inputs = [e, torch.zeros_like(wl), torch.zeros(10), c, wo, bo]
    model = single_op_model(OP, {"top_k": 3}, inputs)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {n: x.numpy() for n, x in zip(OP.inputs, inputs)})
    assert np.flatnonzero(got[1][0]).tolist() == [0, 1, 2]


def test_top_k_above_K_is_one_clear_line():
    with pytest.raises(InvalidAttributeError, match=r"top_k \(40\) must be <= the codebook size K \(37\)") as info:
        OP(*weights(K=37), top_k=40)
    assert "\n" not in str(info.value)


def test_negative_top_k_is_rejected_by_the_schema():
    with pytest.raises(InvalidAttributeError, match="'top_k' must be >= 0"):
        OP.resolve(top_k=-1)
    with pytest.raises(InvalidAttributeError, match="no attribute temperature"):
        OP.resolve(temperature=2.0)


@pytest.mark.parametrize("index, shape, named", [
    (1, (37, 23), "logits_weight must be (K, 24)"),
    (2, (36,), "logits_bias must be (37,)"),
    (3, (36, 10), "codebook must be (K, code_dim)"),
    (4, (24, 9), "out_weight must be (D_out, code_dim)"),
    (5, (23,), "out_bias must be (D_out,)"),
])
def test_weights_that_do_not_fit_are_named(index, shape, named):
    inputs = weights()
    inputs[index] = torch.zeros(shape)
    with pytest.raises(ShapeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        OP(*inputs, top_k=4)


def test_errors_are_edgekit_errors():
    assert issubclass(InvalidAttributeError, EdgekitError) and issubclass(ShapeError, EdgekitError)
    with pytest.raises(ShapeError, match="at least one dim"):
        OP(torch.tensor(1.0), *weights()[1:], top_k=4)
