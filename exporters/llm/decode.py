"""Decoder-LLM decode step: new token ids + the past key/value cache -> logits and the updated cache.

Hugging Face's `DynamicCache` concatenates the past with the new keys/values inside each attention
layer (one ONNX `Concat`: present = concat(past, new)), then `edgekit_decode` attends the new queries
to the whole cache with ONNX `Attention` (opset 23, ONNX Runtime's fused kernel). Its causal mask is
explicit, (T, P + T) with the right offset: new token i sees cache positions <= P + i (and, on
sliding-window layers, only the last `window` of them). DHSA models prefill sparsely and decode
densely over the full cache, as the paper's code does.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

DECODE_ATTENTION = "edgekit_decode"


def decode_mask(query_len: int, key_len: int, window: int | None = None) -> torch.Tensor:
    """(T, L) True = attend: query i sits at position L - T + i and sees keys up to it (window: the last
    `window` of them, as Hugging Face's sliding layers do)."""
    rows = torch.arange(query_len).unsqueeze(1) + (key_len - query_len)  # (T, 1)
    cols = torch.arange(key_len).unsqueeze(0)  # (1, L)
    mask = cols <= rows
    if window:
        mask = mask & (rows - cols < window)
    return mask


def _eager_attention(query, key, value, mask, scaling, softcap) -> torch.Tensor:
    """PyTorch twin of ONNX Attention with a boolean mask: cap the scores first, then mask. (B, Hq, T, D)."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = query @ key.transpose(-1, -2) * scaling  # (B, Hq, T, L)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ value


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     softcap=None, sliding_window=None, **kwargs):
    """Queries (B, Hq, T, D) of the new tokens over the whole cache (B, Hkv, P + T, D). Returns (B, T, Hq, D)."""
    scaling = scaling or query.shape[-1] ** -0.5
    mask = decode_mask(query.shape[2], key.shape[2], sliding_window)
    if torch.onnx.is_in_onnx_export():
        out, *_ = torch.onnx.ops.attention(query, key, value, attn_mask=mask, scale=scaling,
                                           softcap=float(softcap or 0.0))
    else:
        out = _eager_attention(query, key, value, mask, scaling, softcap)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, lambda *args, **kwargs: None)


class DecodeGraph(torch.nn.Module):
    """input_ids (B, T) and past.{i}.key / past.{i}.value (B, Hkv, P, D) per layer -> last-token logits
    (B, vocab) and present.{i}.key / .value (B, Hkv, P + T, D). Positions continue from P."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        batch, seq = input_ids.shape
        start = past[0].shape[2]
        positions = (torch.arange(seq, device=input_ids.device) + start).expand(batch, seq)
        cache = DynamicCache()  # full layers only: a sliding layer keeps its whole cache, the mask windows it
        for layer, (key, value) in enumerate(zip(past[0::2], past[1::2])):
            cache.update(key, value, layer)
        out = self.model(input_ids=input_ids, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits[:, -1, :], *present)
