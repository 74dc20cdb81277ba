"""edgekit::SlidingWindowAttention — causal attention in which a query sees only the last `window` keys.

Sliding-window layers (Gemma2/3's local layers, Mistral) are O(S * window) in what they compute, but a
dense export that masks an S x S score matrix pays O(S^2) time and memory. This op pays for what the
layer sees: queries are cut into blocks of `window` tokens and each block attends to its own keys and the
previous block's (2 * window keys, masked to the window), with the blocks folded into the batch of one
ONNX `Attention`. When S <= window the window hides nothing and the op is ONNX `Attention` with
`is_causal`, the fused dense kernel.

Query i sees key j iff 0 <= i - j < window (Hugging Face's sliding-window mask). Gemma2's logit softcap is
applied before masking, as ONNX Runtime and Gemma2 do.

Inputs: query (B, Hq, S, D) after RoPE, key and value (B, Hkv, S, D), Hq % Hkv == 0 (GQA).
Output: (B, Hq, S, D).
Versions: 1 (this one).
"""

from __future__ import annotations

from typing import Sequence

import torch
from onnxscript import FLOAT, script
from onnxscript import opset23 as op
from onnxscript.values import Opset


from .attention_inputs import check_qkv, qkv_sample
from .registry import DOMAIN, DOMAIN_OPSET, Attribute, OpDef, Output, Sample, register

edgekit_opset = Opset(DOMAIN, DOMAIN_OPSET)

ATTRIBUTES = (
    Attribute("window", 4096, "a query sees the last `window` positions, itself included", minimum=1),
    Attribute("softcap", 0.0, "0: off; else logits = softcap * tanh(logits / softcap) (Gemma2)", minimum=0.0),
    Attribute("scale", 0.0, "logit scale; 0 means 1/sqrt(head_dim)", minimum=0.0),
)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference: the full masked score matrix, written for clarity, not speed.


def _reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, window: int, softcap: float,
               scale: float) -> torch.Tensor:
    check_qkv("SlidingWindowAttention", query, key, value)
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    logits = query @ key.transpose(-1, -2) * (scale or query.shape[-1] ** -0.5)  # (B, Hq, S, S)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    pos = torch.arange(query.shape[2])
    gap = pos[:, None] - pos[None, :]  # query position - key position
    visible = (gap >= 0) & (gap < window)
    return logits.masked_fill(~visible, float("-inf")).softmax(-1) @ value


def _output_shapes(input_shapes: Sequence[Sequence[int]], attrs: dict) -> list[Sequence[int]]:
    return [input_shapes[0]]


# ----------------------------------------------------------------------------------------------------
# ONNX function body (opset 23). NB query blocks of L = window tokens; blocks fold into the batch.


@script(edgekit_opset, default_opset=op)
def SlidingWindowAttention(query: FLOAT, key: FLOAT, value: FLOAT, window: int = 4096, softcap: float = 0.0,
                           scale: float = 0.0) -> FLOAT:
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    batch = op.Shape(query, start=0, end=1)
    q_heads = op.Shape(query, start=1, end=2)
    kv_heads = op.Shape(key, start=1, end=2)
    seq = op.Shape(query, start=2, end=3)
    dim = op.Shape(query, start=3, end=4)
    L = op.Reshape(op.Constant(value_int=window), one)
    d = op.CastLike(dim, query)
    user_scale = op.CastLike(op.Constant(value_float=scale), query)
    q_scale = op.Where(user_scale > op.CastLike(0.0, query), user_scale, op.Reciprocal(op.Sqrt(d)))

    if op.Squeeze(seq <= L):
        result = op.Attention(query * q_scale, key, value, is_causal=1, scale=1.0, softcap=softcap)
    else:
        n_blocks = op.Div(seq + L - one, L)
        padded = n_blocks * L
        pad = op.Concat(zero, zero, zero, zero, zero, zero, padded - seq, zero, axis=0)
        q = op.Pad(query * q_scale, pad)  # (B, Hq, NB * L, D)
        q = op.Reshape(q, op.Concat(batch, q_heads, n_blocks, L, dim, axis=0))
        q = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3, 4]), op.Concat(batch * n_blocks, q_heads, L, dim, axis=0))
        # keys and values side by side on the channels: every block after the block before it (zeros first)
        kv = op.Pad(op.Concat(key, value, axis=3), pad)  # (B, Hkv, NB * L, 2D)
        blocks = op.Reshape(kv, op.Concat(batch, kv_heads, n_blocks, L, dim + dim, axis=0))  # (B, Hkv, NB, L, 2D)
        before = op.Pad(op.Slice(blocks, zero, n_blocks - one, two),
                        op.Concat(zero, zero, one, zero, zero, zero, zero, zero, zero, zero, axis=0))
        pairs = op.Transpose(op.Concat(before, blocks, axis=3), perm=[0, 2, 1, 3, 4])  # (B, NB, Hkv, 2L, 2D)
        pairs = op.Reshape(pairs, op.Concat(batch * n_blocks, kv_heads, L + L, dim + dim, axis=0))
        k, v = op.Split(pairs, num_outputs=2, axis=-1)  # (B * NB, Hkv, 2L, D) each
        # block b's queries are b*L + r; its keys b*L - L + c (c < L: the previous block, zeros for b = 0)
        first = op.Range(op.Squeeze(zero), op.Squeeze(padded), op.Squeeze(L))  # (NB,) b * L
        q_pos = op.Unsqueeze(first, op.Constant(value_ints=[1, 2])) + op.Unsqueeze(
            op.Range(op.Squeeze(zero), op.Squeeze(L), op.Constant(value_int=1)), one)  # (NB, L, 1)
        k_pos = op.Unsqueeze(first - L, op.Constant(value_ints=[1, 2])) + op.Range(
            op.Squeeze(zero), op.Squeeze(L + L), op.Constant(value_int=1))  # (NB, 1, 2L)
        gap = q_pos - k_pos
        visible = op.And(op.And(gap >= zero, gap < L), k_pos >= zero)  # (NB, L, 2L)
        mask = op.Tile(op.Unsqueeze(visible, one), op.Concat(batch, one, one, one, axis=0))  # (B * NB, 1, L, 2L)
        o = op.Attention(q, k, v, mask, scale=1.0, softcap=softcap)  # (B * NB, Hq, L, D)
        o = op.Transpose(op.Reshape(o, op.Concat(batch, n_blocks, q_heads, L, dim, axis=0)), perm=[0, 2, 1, 3, 4])
        result = op.Slice(op.Reshape(o, op.Concat(batch, q_heads, padded, dim, axis=0)), zero, seq, two)
    return result


# ----------------------------------------------------------------------------------------------------
# Parity-table samples: S below, at and past the window, ragged blocks, GQA, batch, softcap, scale.


def samples() -> list[Sample]:
    s = qkv_sample
    return [
        s("S1", 1, 2, 1, 1, 8, window=4),
        s("S_lt_window", 1, 4, 2, 10, 16, window=16),
        s("S_eq_window", 1, 4, 2, 16, 16, window=16),
        s("S_window_plus_1", 1, 4, 2, 17, 16, window=16),
        s("ragged_S100_window16", 1, 4, 2, 100, 16, window=16),
        s("ragged_S257_window24", 2, 6, 2, 257, 8, window=24),
        s("window1", 1, 2, 1, 20, 8, window=1),
        s("window2_S9", 1, 2, 2, 9, 8, window=2),
        s("gqa1_batch3", 3, 2, 2, 50, 16, window=12),
        s("gqa4", 1, 4, 1, 70, 16, window=20),
        s("softcap", 1, 4, 2, 90, 16, window=32, softcap=2.0),
        s("softcap_short", 1, 4, 2, 20, 16, window=32, softcap=2.0),
        s("scale", 1, 4, 2, 90, 16, window=32, scale=0.3),
        s("D64_S300_window64", 1, 2, 1, 300, 64, window=64),
    ]


SLIDING_WINDOW = register(
    OpDef(
        name="SlidingWindowAttention",
        version=1,
        doc=__doc__.split("\n\n")[0],
        inputs=("query", "key", "value"),
        outputs=(Output("output"),),
        attributes=ATTRIBUTES,
        reference=_reference,
        function=SlidingWindowAttention,
        output_shapes=_output_shapes,
        samples=samples,
    )
)
