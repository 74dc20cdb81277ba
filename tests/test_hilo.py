"""Semantics of edgekit::HiLoAttention that the parity table cannot show, checked against hand-written
attention (torch's scaled_dot_product_attention over explicitly cut windows and pooled maps)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from edgekit.errors import InvalidAttributeError, ShapeError
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import single_op_model
from edgekit.runtime_ops.hilo import branch_widths, lofi_heads, random_inputs

HILO = get_op("HiLoAttention")


def heads_attention(q_tokens, k_tokens, v_tokens, heads):
    """Multi-head SDPA on (B, L, D) token rows, heads split head-major as LITv2 lays them out."""
    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # (B, heads, L, d)
    out = F.scaled_dot_product_attention(split(q_tokens), split(k_tokens), split(v_tokens))
    return out.transpose(1, 2).flatten(2)  # (B, L, D)


def window_branch(x, qkv_w, qkv_b, proj_w, proj_b, heads, s):
    """Hi-Fi by hand: every s x s window cut out with a loop, attended on its own, put back."""
    B, H, W, C = x.shape
    out = torch.zeros(B, H, W, proj_w.shape[0])
    for i in range(0, H, s):
        for j in range(0, W, s):
            tokens = x[:, i:i + s, j:j + s].reshape(B, -1, C)
            q, k, v = F.linear(tokens, qkv_w, qkv_b).chunk(3, dim=-1)
            attended = F.linear(heads_attention(q, k, v, heads), proj_w, proj_b)
            out[:, i:i + s, j:j + s] = attended.view(B, s, s, -1)
    return out


def pooled_branch(x, q_w, q_b, kv_w, kv_b, proj_w, proj_b, heads, s):
    """Lo-Fi by hand: all positions query keys / values of the s x s average-pooled map."""
    B, H, W, C = x.shape
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), s).flatten(2).transpose(1, 2)  # (B, M, C)
    k, v = F.linear(pooled, kv_w, kv_b).chunk(2, dim=-1)
    q = F.linear(x.reshape(B, H * W, C), q_w, q_b)
    return F.linear(heads_attention(q, k, v, heads), proj_w, proj_b).view(B, H, W, -1)


def hilo(inputs, heads, alpha, window, **extra):
    return HILO(*inputs, num_heads=heads, alpha=alpha, window=window, **extra)


def test_window_1_is_plain_multi_head_self_attention():
    B, H, W, C, heads = 2, 5, 6, 48, 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, W, C, generator=g)
    qkv_w, qkv_b = torch.randn(3 * C, C, generator=g) / C ** 0.5, torch.randn(3 * C, generator=g) * 0.1
    proj_w, proj_b = torch.randn(C, C, generator=g) / C ** 0.5, torch.randn(C, generator=g) * 0.1
    q, k, v = F.linear(x.reshape(B, H * W, C), qkv_w, qkv_b).chunk(3, dim=-1)
    expected = F.linear(heads_attention(q, k, v, heads), proj_w, proj_b).view(B, H, W, C)
    empty = [torch.zeros(0, C), torch.zeros(0), torch.zeros(0, 0), torch.zeros(0)]
    lofi = [qkv_w[:C], qkv_b[:C], qkv_w[C:], qkv_b[C:], proj_w, proj_b]
    for alpha in (0.0, 0.5, 0.9):  # window 1 puts every head in Lo-Fi, whatever alpha is
        torch.testing.assert_close(hilo([x, *empty, *lofi], heads, alpha, 1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("alpha, window", [(0.0, 2), (0.0, 3), (1.0, 2), (1.0, 3), (0.5, 2), (0.9, 2)])
def test_branches_match_hand_written_window_and_pooled_attention(alpha, window):
    B, H, W, C, heads = 2, 6, 12, 64, 4
    inputs = random_inputs(B, H, W, C, heads, alpha, window, seed=3)
    x, hi_w, lo_w = inputs[0], inputs[1:5], inputs[5:]
    hi_dim, lo_dim = branch_widths(C, heads, alpha, window)
    parts = []
    if hi_dim:
        parts.append(window_branch(x, *hi_w, heads - lofi_heads(heads, alpha, window), window))
    if lo_dim:
        parts.append(pooled_branch(x, *lo_w, lofi_heads(heads, alpha, window), window))
    expected = torch.cat(parts, dim=-1)  # Hi-Fi channels first, as LITv2
    torch.testing.assert_close(hilo(inputs, heads, alpha, window), expected, rtol=0, atol=1e-5)


def test_head_split_follows_litv2():
    assert [lofi_heads(12, 0.9, 2), lofi_heads(16, 0.9, 2), lofi_heads(10, 0.9, 2), lofi_heads(5, 0.9, 2)] == [
        10, 14, 9, 4]
    assert lofi_heads(24, 0.9, 1) == 24 and lofi_heads(3, 0.0, 2) == 0 and lofi_heads(3, 1.0, 2) == 3
    assert branch_widths(768, 12, 0.9, 2) == (128, 640)


@pytest.mark.parametrize("H, W, window", [(7, 9, 2), (5, 5, 3), (1, 7, 2), (6, 10, 4)])
def test_padding_crops_back_to_the_unpadded_result(H, W, window):
    """Padding by hand then cropping equals the op on the ragged map (queries at padded spots are dropped)."""
    inputs = random_inputs(2, H, W, 32, 4, 0.5, window, seed=5)
    out = hilo(inputs, 4, 0.5, window)
    assert out.shape == (2, H, W, 32)
    padded = F.pad(inputs[0], (0, 0, 0, -W % window, 0, -H % window))
    on_padded = hilo([padded, *inputs[1:]], 4, 0.5, window)
    torch.testing.assert_close(out, on_padded[:, :H, :W], rtol=0, atol=1e-6)


def test_one_onnx_model_serves_two_image_sizes():
    attrs = dict(num_heads=4, alpha=0.75, window=2)
    model = single_op_model(HILO, attrs, random_inputs(1, 4, 4, 32, 4, 0.75, 2))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for B, H, W in [(2, 7, 9), (1, 14, 14)]:
        inputs = random_inputs(B, H, W, 32, 4, 0.75, 2, seed=H)
        (got,) = session.run(None, {n: t.numpy() for n, t in zip(HILO.inputs, inputs)})
        np.testing.assert_allclose(got, HILO(*inputs, **attrs).numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("attrs, word", [
    (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(window=0), "window"),
    (dict(num_heads=0), "num_heads"), (dict(scale=-1.0), "scale"), (dict(num_heads=2.5), "num_heads"),
])
def test_invalid_attributes_name_themselves(attrs, word):
    inputs = random_inputs(1, 4, 4, 16, 2, 0.5, 2)
    with pytest.raises(InvalidAttributeError, match=word):
        HILO(*inputs, **{**dict(num_heads=2, alpha=0.5, window=2), **attrs})


def test_bad_shapes_name_the_input():
    inputs = random_inputs(1, 4, 4, 24, 3, 0.5, 2)
    good = dict(num_heads=3, alpha=0.5, window=2)
    with pytest.raises(ShapeError, match="x must be 4-D"):
        HILO(inputs[0].flatten(1, 2), *inputs[1:], **good)
    with pytest.raises(ShapeError, match="not divisible by num_heads 5"):
        HILO(*inputs, **{**good, "num_heads": 5})
    with pytest.raises(ShapeError, match="lo_kv_weight"):
        HILO(*inputs[:7], inputs[7][:-1], *inputs[8:], **good)
    with pytest.raises(ShapeError, match="hi_qkv_weight"):  # weights for another split of the heads
        HILO(*inputs, **{**good, "alpha": 0.9})
    with pytest.raises(ShapeError, match="takes 11 inputs") as caught:
        HILO(*inputs[:-1], **good)
    assert "\n" not in str(caught.value)
