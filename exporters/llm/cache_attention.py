"""Attention of a decode step over a pre-allocated key/value cache that is updated in place.

ONNX Runtime's `com.microsoft::GroupQueryAttention` takes the cache as (B, Hkv, C, D) buffers of a fixed
capacity C. It writes the new keys/values at rows [P, P + T) of `present_key` / `present_value` and
attends over rows [0, P + T); when the caller binds each present output to the very buffer it passes as
the past input (IO binding), the kernel sees one buffer and writes only the T new rows: a step no longer
copies the cache. Run without IO binding (or without sharing), present is a fresh (B, Hkv, C, D) tensor:
rows [0, P) copied from the past, the new rows, zeros after them; `gqa_reference` computes that.

The queries and keys reach it already rotated (the Hugging Face model applies RoPE, and QK-norm where
the model has it), so the kernel's own rotary stays off. Checked on ORT 1.32's CPU kernel: grouped heads
(any Hq / Hkv), `scale`, `softcap` (capped before the mask, as Gemma2), `local_window_size` (a query at
position i sees keys j with i - j < window) over a full-length buffer, batch > 1, several new tokens
(with `query_seqlens`, which batch > 1 needs), fp32; head_dim must be a multiple of 8.
"""

from __future__ import annotations

import dataclasses

import torch

GQA = "com.microsoft::GroupQueryAttention"
HEAD_DIM_MULTIPLE = 8  # ORT's CPU kernel: "head_size must be a multiple of 8"


@dataclasses.dataclass
class CacheStep:
    """What every layer's attention needs from one decode step; each layer leaves its present here.

    `buffers[i]` is layer i's (past_key, past_value), (B, Hkv, C, D); after this step row b holds
    `lengths[b]` tokens, its T new ones last.
    """

    buffers: list[tuple[torch.Tensor, torch.Tensor]]
    lengths: torch.Tensor  # (B,) int64
    present: dict[int, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)

    def presents(self) -> list[torch.Tensor]:
        """present key, value of every layer, in layer order."""
        return [t for layer in range(len(self.buffers)) for t in self.present[layer]]


def cache_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                    past_value: torch.Tensor, lengths: torch.Tensor, scale: float, softcap: float = 0.0,
                    window: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query (B, Hq, T, D) and new key/value (B, Hkv, T, D) -> output (B, T, Hq, D) and present key/value
    (B, Hkv, C, D). One GroupQueryAttention node under export, its PyTorch twin otherwise."""
    if not torch.onnx.is_in_onnx_export():
        return gqa_reference(query, key, value, past_key, past_value, lengths, scale, softcap, window)
    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    packed = [t.transpose(1, 2).reshape(batch, seq, -1) for t in (query, key, value)]  # (B, T, H * D)
    seqlens_k = (lengths - 1).to(torch.int32)  # (B,) tokens after the step, minus one
    total = lengths.max().to(torch.int32)  # () the longest row's
    new_tokens = torch.full_like(seqlens_k, seq)  # (B,) query_seqlens: lets batch > 1 take T > 1 new tokens
    inputs = [*packed, past_key, past_value, seqlens_k, total, *[None] * 9, new_tokens]
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=float(scale), softcap=float(softcap),
                 local_window_size=int(window) if window else -1)
    out, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
        GQA, inputs, attrs, dtypes=(query.dtype,) * 3,
        shapes=((batch, seq, heads * dim), past_key.shape, past_value.shape), version=1)
    return out.reshape(batch, seq, heads, dim), present_key, present_value


def write_rows(past: torch.Tensor, new: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """past (B, H, C, D) with new (B, H, T, D) at rows [L - T, L) of each row b (L = lengths[b]); rows from
    L on are zero, as in ONNX Runtime's unshared present."""
    batch, heads, capacity, dim = past.shape
    start = (lengths - new.shape[2])[:, None]  # (B, 1)
    rows = torch.arange(capacity)[None]  # (1, C)
    offset = (rows - start).clamp(0, new.shape[2] - 1)  # (B, C) the new row each cache row would take
    fresh = new.gather(2, offset[:, None, :, None].expand(batch, heads, capacity, dim))  # (B, H, C, D)
    is_new = ((rows >= start) & (rows < lengths[:, None]))[:, None, :, None]
    is_past = (rows < start)[:, None, :, None]
    return torch.where(is_new, fresh, torch.where(is_past, past, torch.zeros_like(past)))


def gqa_reference(query, key, value, past_key, past_value, lengths, scale, softcap=0.0, window=0):
    """PyTorch twin of GroupQueryAttention over a shared buffer (rotary off). Returns (B, T, Hq, D) and the
    present key/value (B, Hkv, C, D)."""
    present_key, present_value = write_rows(past_key, key, lengths), write_rows(past_value, value, lengths)
    group = query.shape[1] // key.shape[1]
    keys = present_key.repeat_interleave(group, dim=1)  # (B, Hq, C, D)
    values = present_value.repeat_interleave(group, dim=1)
    scores = query @ keys.transpose(-1, -2) * scale  # (B, Hq, T, C)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    positions = lengths[:, None] - query.shape[2] + torch.arange(query.shape[2])  # (B, T)
    rows = torch.arange(past_key.shape[2])  # (C,)
    seen = rows <= positions[..., None]  # (B, T, C)
    if window:
        seen = seen & (positions[..., None] - rows < window)
    out = scores.masked_fill(~seen[:, None], float("-inf")).softmax(-1) @ values  # (B, Hq, T, D)
    return out.transpose(1, 2), present_key, present_value
