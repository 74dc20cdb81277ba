"""edgekit::HiLoAttention — LITv2's HiLo attention on a channels-last feature map.

From "Fast Vision Transformers with HiLo Attention" (LITv2, NeurIPS 2022). The heads are split in two:

- Lo-Fi (floor(num_heads * alpha) heads): queries at every position attend globally to keys/values
  projected from the `window` x `window` average-pooled map (pool first, then project), so the attention
  is (H*W) x (H*W / s^2).
- Hi-Fi (the other heads): self-attention inside each non-overlapping s x s window.

Each branch has its own output projection and the outputs are concatenated on channels, **Hi-Fi first,
then Lo-Fi**, as in LITv2. window 1 is plain multi-head self-attention: as LITv2 does, every head is then
Lo-Fi (no pooling) whatever alpha is. alpha 0 = Hi-Fi only (local window attention), alpha 1 = Lo-Fi only.
The split is floor(num_heads * alpha + 1e-6): LITv2's int(num_heads * alpha) with rounding error forgiven
(it agrees with LITv2 on every released config).

Any H x W: the map is padded right/bottom with zeros to a multiple of the window (no mask, as LITv2's
detection backbone does) and the output cropped back. Lo-Fi queries are per position, so they are taken
from the unpadded map (the same numbers as padding then cropping, with less work).

Inputs (weights as torch.nn.Linear stores them, (out, in), so one body serves every layer):
  x (B, H, W, C);
  hi_qkv_weight (3*Dh, C), hi_qkv_bias (3*Dh,), hi_proj_weight (Dh, Dh), hi_proj_bias (Dh,);
  lo_q_weight (Dl, C), lo_q_bias (Dl,), lo_kv_weight (2*Dl, C), lo_kv_bias (2*Dl,),
  lo_proj_weight (Dl, Dl), lo_proj_bias (Dl,);
with head_dim = C / num_heads, Dh = Hi-Fi heads * head_dim, Dl = Lo-Fi heads * head_dim. qkv rows are
ordered (q|k|v, head, head_dim), kv rows (k|v, head, head_dim), as LITv2's h_qkv / l_kv. A branch with no
heads takes zero-sized tensors ((0, C), (0,), (0, 0), (0,)). Output: (B, H, W, C), typed like x.

The ONNX body reads the branch widths from the weight shapes (a float attribute cannot reproduce Python's
floor exactly: 0.9 is 0.899999976 in ONNX), and skips a zero-width branch with `If`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from onnxscript import FLOAT, script
from onnxscript import opset23 as op
from onnxscript.values import Opset

from edgekit.errors import ShapeError

from .registry import DOMAIN, DOMAIN_OPSET, Attribute, OpDef, Output, Sample, register

edgekit_opset = Opset(DOMAIN, DOMAIN_OPSET)

INPUTS = ("x", "hi_qkv_weight", "hi_qkv_bias", "hi_proj_weight", "hi_proj_bias", "lo_q_weight", "lo_q_bias",
          "lo_kv_weight", "lo_kv_bias", "lo_proj_weight", "lo_proj_bias")

ATTRIBUTES = (
    Attribute("num_heads", 8, "attention heads of both branches together (head_dim = C / num_heads)", minimum=1),
    Attribute("alpha", 0.9, "share of heads in Lo-Fi (pooled global attention); the rest are Hi-Fi", 0.0, 1.0),
    Attribute("window", 2, "s: Hi-Fi window side and Lo-Fi pooling size; 1 = plain multi-head attention",
              minimum=1),
    Attribute("scale", 0.0, "logit scale; 0 means 1/sqrt(head_dim)", minimum=0.0),
)


def lofi_heads(num_heads: int, alpha: float, window: int) -> int:
    """Heads in the Lo-Fi branch; window 1 puts every head there (LITv2: plain MSA)."""
    return num_heads if window == 1 else math.floor(num_heads * alpha + 1e-6)


def branch_widths(dim: int, num_heads: int, alpha: float, window: int) -> tuple[int, int]:
    """(Hi-Fi channels, Lo-Fi channels); they add up to dim."""
    lo = lofi_heads(num_heads, alpha, window) * (dim // num_heads)
    return dim - lo, lo


def weight_shapes(dim: int, num_heads: int, alpha: float, window: int) -> dict[str, tuple[int, ...]]:
    """The shape every weight input must have, by input name."""
    hi, lo = branch_widths(dim, num_heads, alpha, window)
    return {"hi_qkv_weight": (3 * hi, dim), "hi_qkv_bias": (3 * hi,), "hi_proj_weight": (hi, hi),
            "hi_proj_bias": (hi,), "lo_q_weight": (lo, dim), "lo_q_bias": (lo,), "lo_kv_weight": (2 * lo, dim),
            "lo_kv_bias": (2 * lo,), "lo_proj_weight": (lo, lo), "lo_proj_bias": (lo,)}


def check_shapes(shapes: Sequence[Sequence[int]], attrs: dict) -> None:
    """ShapeError naming the first input that does not fit x and the attributes."""
    if len(shapes) != len(INPUTS):
        raise ShapeError(f"HiLoAttention takes {len(INPUTS)} inputs ({', '.join(INPUTS)}), got {len(shapes)}")
    if len(shapes[0]) != 4:
        raise ShapeError(f"HiLoAttention: x must be 4-D (B, H, W, C), got shape {list(shapes[0])}")
    dim, heads = int(shapes[0][3]), attrs["num_heads"]
    if dim % heads:
        raise ShapeError(f"HiLoAttention: channels {dim} are not divisible by num_heads {heads}")
    expected = weight_shapes(dim, heads, attrs["alpha"], attrs["window"])
    for name, shape in zip(INPUTS[1:], shapes[1:]):
        if tuple(int(d) for d in shape) != expected[name]:
            raise ShapeError(f"HiLoAttention: {name} has shape {list(shape)}, expected {list(expected[name])} "
                             f"for C={dim}, num_heads={heads}, alpha={attrs['alpha']}, window={attrs['window']}")


# ----------------------------------------------------------------------------------------------------
# PyTorch reference: written for clarity; the oracle of the parity table.


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the last two axes."""
    return ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v


def hifi(padded: torch.Tensor, qkv_w, qkv_b, proj_w, proj_b, head_dim: int, s: int, scale: float) -> torch.Tensor:
    """Self-attention inside each s x s window of a map whose sides are multiples of s."""
    B, H, W, C = padded.shape
    heads = qkv_w.shape[0] // (3 * head_dim)
    windows = padded.view(B, H // s, s, W // s, s, C).transpose(2, 3).reshape(B, -1, s * s, C)  # (B, nW, s*s, C)
    qkv = F.linear(windows, qkv_w, qkv_b).view(B, -1, s * s, 3, heads, head_dim)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (B, nW, heads, s*s, head_dim)
    out = attend(q, k, v, scale).transpose(2, 3)  # (B, nW, s*s, heads, head_dim)
    out = out.reshape(B, H // s, W // s, s, s, heads * head_dim).transpose(2, 3)  # (B, H/s, s, W/s, s, Dh)
    return F.linear(out.reshape(B, H, W, -1), proj_w, proj_b)  # (B, H, W, Dh)


def lofi(x: torch.Tensor, padded: torch.Tensor, q_w, q_b, kv_w, kv_b, proj_w, proj_b, head_dim: int, s: int,
         scale: float) -> torch.Tensor:
    """Every position attends to keys/values projected from the s x s average-pooled (padded) map."""
    B, H, W, C = x.shape
    heads = q_w.shape[0] // head_dim
    q = F.linear(x, q_w, q_b).view(B, H * W, heads, head_dim).transpose(1, 2)  # (B, heads, N, head_dim)
    pooled = F.avg_pool2d(padded.permute(0, 3, 1, 2), s).flatten(2).transpose(1, 2)  # (B, M, C)
    kv = F.linear(pooled, kv_w, kv_b).view(B, -1, 2, heads, head_dim)
    k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, heads, M, head_dim)
    out = attend(q, k, v, scale).transpose(1, 2).reshape(B, H, W, heads * head_dim)  # (B, H, W, Dl)
    return F.linear(out, proj_w, proj_b)


def hilo_attention(x: torch.Tensor, hi_qkv_weight, hi_qkv_bias, hi_proj_weight, hi_proj_bias, lo_q_weight,
                   lo_q_bias, lo_kv_weight, lo_kv_bias, lo_proj_weight, lo_proj_bias, *, num_heads: int,
                   alpha: float, window: int, scale: float) -> torch.Tensor:
    """Reference HiLo: pad to whole windows, run the non-empty branches, crop, concatenate Hi-Fi | Lo-Fi."""
    B, H, W, C = x.shape
    head_dim, s = C // num_heads, window
    scale = scale or head_dim ** -0.5
    padded = F.pad(x, (0, 0, 0, -W % s, 0, -H % s))  # (B, Hp, Wp, C), zeros right / bottom
    outputs = []
    if hi_qkv_weight.shape[0]:
        hi = hifi(padded, hi_qkv_weight, hi_qkv_bias, hi_proj_weight, hi_proj_bias, head_dim, s, scale)
        outputs.append(hi[:, :H, :W])
    if lo_q_weight.shape[0]:
        outputs.append(lofi(x, padded, lo_q_weight, lo_q_bias, lo_kv_weight, lo_kv_bias, lo_proj_weight,
                            lo_proj_bias, head_dim, s, scale))
    return torch.cat(outputs, dim=-1)  # (B, H, W, C)


def _reference(*inputs: torch.Tensor, **attrs) -> torch.Tensor:
    check_shapes([t.shape for t in inputs], attrs)
    return hilo_attention(*inputs, **attrs)


def _output_shapes(input_shapes: Sequence[Sequence[int]], attrs: dict) -> list[Sequence[int]]:
    check_shapes(input_shapes, attrs)  # export checks shapes too: the reference does not run then
    return [input_shapes[0]]


# ----------------------------------------------------------------------------------------------------
# ONNX function body (opset 23). Shapes: B batch, H x W map, Hp x Wp padded, s window, gh x gw windows,
# C channels, d head_dim, h heads of a branch, Dh / Dl branch widths, N = H*W, M = gh*gw pooled tokens.
# Projections are Gemm(transB=1) on (tokens, C) rows, ~75% of the time at LITv2-S's stage 3. Attention is
# MatMul + Softmax: ONNX Attention for Lo-Fi measured the same (B 64, 14x14, C 768, 12 heads, ORT CPU 2
# threads: median 399 vs 405 ms on a loaded machine) and plain ops run on every execution provider.


@script(edgekit_opset, default_opset=op)
def HiLoAttention(
    x: FLOAT,
    hi_qkv_weight: FLOAT,
    hi_qkv_bias: FLOAT,
    hi_proj_weight: FLOAT,
    hi_proj_bias: FLOAT,
    lo_q_weight: FLOAT,
    lo_q_bias: FLOAT,
    lo_kv_weight: FLOAT,
    lo_kv_bias: FLOAT,
    lo_proj_weight: FLOAT,
    lo_proj_bias: FLOAT,
    num_heads: int = 8,
    alpha: float = 0.9,
    window: int = 2,
    scale: float = 0.0,
) -> FLOAT:
    one = op.Constant(value_ints=[1])
    minus_one = op.Constant(value_ints=[-1])
    batch = op.Shape(x, start=0, end=1)
    height = op.Shape(x, start=1, end=2)
    width = op.Shape(x, start=2, end=3)
    dim = op.Shape(x, start=3, end=4)
    head_dim = op.Div(dim, op.Reshape(op.Constant(value_int=num_heads), one))
    s = op.Reshape(op.Constant(value_int=window), one)
    hi_width = op.Shape(hi_proj_weight, start=0, end=1)
    lo_width = op.Shape(lo_proj_weight, start=0, end=1)
    user_scale = op.CastLike(op.Constant(value_float=scale), x)
    q_scale = op.Where(user_scale > op.CastLike(0.0, x), user_scale,
                       op.Reciprocal(op.Sqrt(op.CastLike(head_dim, x))))

    # zero padding right / bottom to whole windows: (B, Hp, Wp, C)
    pad_h = op.Mod(s - op.Mod(height, s), s)
    pad_w = op.Mod(s - op.Mod(width, s), s)
    zero = op.Constant(value_ints=[0])
    padded = op.Pad(x, op.Concat(zero, zero, zero, zero, zero, pad_h, pad_w, zero, axis=0))
    grid_h = op.Div(height + pad_h, s)
    grid_w = op.Div(width + pad_w, s)
    rows = op.Concat(minus_one, dim, axis=0)

    if op.Squeeze(hi_width > zero):
        # Hi-Fi: project every padded token, then regroup into windows (B*gh*gw, h, s*s, d)
        hi_heads = op.Div(hi_width, head_dim)
        qkv = op.Gemm(op.Reshape(padded, rows), hi_qkv_weight, hi_qkv_bias, transB=1)  # (B*Hp*Wp, 3*Dh)
        qkv = op.Reshape(qkv, op.Concat(batch, grid_h, s, grid_w, s, op.Constant(value_ints=[3]), hi_heads,
                                        head_dim, axis=0))
        qkv = op.Transpose(qkv, perm=[5, 0, 1, 3, 6, 2, 4, 7])  # (3, B, gh, gw, h, s, s, d)
        qkv = op.Reshape(qkv, op.Concat(op.Constant(value_ints=[3]), minus_one, hi_heads, s * s, head_dim, axis=0))
        q, k, v = op.Split(qkv, axis=0, num_outputs=3)  # each (1, B*gh*gw, h, s*s, d)
        scores = op.MatMul(q, op.Transpose(k, perm=[0, 1, 2, 4, 3])) * q_scale
        hi = op.MatMul(op.Softmax(scores, axis=-1), v)  # (1, B*gh*gw, h, s*s, d)
        hi = op.Reshape(hi, op.Concat(batch, grid_h, grid_w, hi_heads, s, s, head_dim, axis=0))
        hi = op.Transpose(hi, perm=[0, 1, 4, 2, 5, 3, 6])  # (B, gh, s, gw, s, h, d)
        hi = op.Gemm(op.Reshape(hi, op.Concat(minus_one, hi_width, axis=0)), hi_proj_weight, hi_proj_bias,
                     transB=1)  # (B*Hp*Wp, Dh)
        hi = op.Reshape(hi, op.Concat(batch, height + pad_h, width + pad_w, hi_width, axis=0))
        hi_out = op.Slice(hi, op.Constant(value_ints=[0, 0]), op.Concat(height, width, axis=0),
                          op.Constant(value_ints=[1, 2]))  # (B, H, W, Dh)
    else:
        hi_out = op.Slice(x, zero, zero, op.Constant(value_ints=[3]))  # (B, H, W, 0)

    if op.Squeeze(lo_width > zero):
        # Lo-Fi: queries from every (unpadded) position, keys / values from the s x s mean of the padded map
        lo_heads = op.Div(lo_width, head_dim)
        q = op.Gemm(op.Reshape(x, rows), lo_q_weight, lo_q_bias, transB=1)  # (B*N, Dl)
        q = op.Transpose(op.Reshape(q, op.Concat(batch, minus_one, lo_heads, head_dim, axis=0)),
                         perm=[0, 2, 1, 3])  # (B, h, N, d)
        pooled = op.ReduceMean(op.Reshape(padded, op.Concat(batch, grid_h, s, grid_w, s, dim, axis=0)),
                               op.Constant(value_ints=[2, 4]), keepdims=0)  # (B, gh, gw, C)
        kv = op.Gemm(op.Reshape(pooled, rows), lo_kv_weight, lo_kv_bias, transB=1)  # (B*M, 2*Dl)
        kv = op.Reshape(kv, op.Concat(batch, minus_one, op.Constant(value_ints=[2]), lo_heads, head_dim, axis=0))
        k, v = op.Split(kv, axis=2, num_outputs=2)  # each (B, M, 1, h, d)
        k_t = op.Transpose(k, perm=[0, 2, 3, 4, 1])  # (B, 1, h, d, M)
        v = op.Transpose(v, perm=[0, 2, 3, 1, 4])  # (B, 1, h, M, d)
        q = op.Unsqueeze(q, one)  # (B, 1, h, N, d)
        lo = op.MatMul(op.Softmax(op.MatMul(q, k_t) * q_scale, axis=-1), v)  # (B, 1, h, N, d)
        lo = op.Transpose(lo, perm=[0, 3, 1, 2, 4])  # (B, N, 1, h, d)
        lo = op.Gemm(op.Reshape(lo, op.Concat(minus_one, lo_width, axis=0)), lo_proj_weight, lo_proj_bias,
                     transB=1)  # (B*N, Dl)
        lo_out = op.Reshape(lo, op.Concat(batch, height, width, lo_width, axis=0))
    else:
        lo_out = op.Slice(x, zero, zero, op.Constant(value_ints=[3]))  # (B, H, W, 0)

    return op.Concat(hi_out, lo_out, axis=-1)  # (B, H, W, C): Hi-Fi channels first, as LITv2


# ----------------------------------------------------------------------------------------------------
# Parity-table samples: random weights at nn.Linear's scale, ragged maps, every split of the heads.


def random_inputs(B: int, H: int, W: int, C: int, num_heads: int, alpha: float = 0.9, window: int = 2,
                  seed: int = 0) -> list[torch.Tensor]:
    """x (B, H, W, C) and every weight input, shaped for the attributes (zero-sized for an empty branch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, C, generator=g)
    weights = []
    for name, shape in weight_shapes(C, num_heads, alpha, window).items():
        scale = max(shape[-1], 1) ** -0.5 if name.endswith("weight") else 0.1
        weights.append(torch.randn(shape, generator=g) * scale)
    return [x, *weights]


def _sample(name, B, H, W, C, heads, alpha=0.9, window=2, atol=2e-5, **attrs) -> Sample:
    return Sample(name, lambda: random_inputs(B, H, W, C, heads, alpha, window),
                  dict(num_heads=heads, alpha=alpha, window=window, **attrs), atol)


def samples() -> list[Sample]:
    s = _sample
    return [
        s("14x14_c96_h3_a0.9_w2", 2, 14, 14, 96, 3),
        s("7x9_c40_h5_a0.9_w2", 2, 7, 9, 40, 5),  # ragged both ways; 4 Lo-Fi + 1 Hi-Fi heads
        s("5x5_c48_h3_a0.5_w3", 1, 5, 5, 48, 3, alpha=0.5, window=3),
        s("6x10_c64_h4_a0.5_w4", 3, 6, 10, 64, 4, alpha=0.5, window=4),
        s("8x8_c32_h4_a0.5_w4", 1, 8, 8, 32, 4, alpha=0.5, window=4),
        s("1x1_c16_h2_a0.5_w2", 2, 1, 1, 16, 2, alpha=0.5),
        s("1x7_c24_h3_a0.9_w2", 1, 1, 7, 24, 3),
        s("9x1_c24_h3_a0.5_w3", 1, 9, 1, 24, 3, alpha=0.5, window=3),
        s("1x1_c16_h1_w1", 1, 1, 1, 16, 1, window=1),
        s("msa_w1_7x6_c48_h3", 2, 7, 6, 48, 3, window=1),
        s("msa_w1_a0_c32_h4", 1, 4, 5, 32, 4, alpha=0.0, window=1),  # window 1 overrides alpha
        s("hifi_only_a0_8x8_c32_h4", 2, 8, 8, 32, 4, alpha=0.0),
        s("hifi_only_a0_5x7_c48_h3_w3", 1, 5, 7, 48, 3, alpha=0.0, window=3),
        s("lofi_only_a1_8x8_c32_h4", 2, 8, 8, 32, 4, alpha=1.0),
        s("lofi_only_a1_7x5_c40_h5_w3", 1, 7, 5, 40, 5, alpha=1.0, window=3),
        s("odd_h5_a0.5_6x6_c80", 1, 6, 6, 80, 5, alpha=0.5),
        s("h10_a0.9_is_9_lofi_heads", 1, 6, 6, 80, 10),  # 10 * 0.9 in float32 is 8.99999976
        s("a0.1_rounds_to_hifi_only", 1, 4, 4, 24, 3, alpha=0.1),
        s("window_gt_map_3x3_w4", 1, 3, 3, 32, 2, alpha=0.5, window=4),
        s("scale_0.3", 1, 6, 6, 32, 4, alpha=0.5, scale=0.3),
        s("batch4_12x12_c96_h6", 4, 12, 12, 96, 6, atol=5e-5),
    ]


HILO = register(
    OpDef(
        name="HiLoAttention",
        version=1,
        doc=__doc__.split("\n\n")[0],
        inputs=INPUTS,
        outputs=(Output("output"),),
        attributes=ATTRIBUTES,
        reference=_reference,
        function=HiLoAttention,
        output_shapes=_output_shapes,
        samples=samples,
    )
)
