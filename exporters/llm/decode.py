"""Decoder-LLM decode step: new token ids + a pre-allocated key/value cache -> logits, the cache updated.

The cache is one (B, Hkv, C, D) buffer per layer and key/value, C the context it was sized to. Every
layer's attention (`edgekit_decode`) is one ONNX Runtime GroupQueryAttention node that writes the new
keys/values into rows [P, P + T) and attends over rows [0, P + T) (`cache_attention.py`); the Hugging
Face model runs without a cache object of its own, so nothing concatenates. `attention_mask` (B, P + T),
all ones, says how many rows are filled after the step (its row sums). DHSA models prefill sparsely and
decode densely over the full cache, as the paper's code does.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from .cache_attention import CacheStep, cache_attention

DECODE_ATTENTION = "edgekit_decode"
STEP_KWARG = "edgekit_cache_step"  # how the step's buffers reach every layer's attention (a model kwarg)


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     softcap=None, sliding_window=None, **kwargs):
    """Queries (B, Hq, T, D) and the new keys/values (B, Hkv, T, D) of one layer -> (B, T, Hq, D); the
    layer's present buffers go to the step."""
    step: CacheStep = kwargs[STEP_KWARG]
    past_key, past_value = step.buffers[module.layer_idx]
    out, *present = cache_attention(query, key, value, past_key, past_value, step.lengths,
                                    scale=scaling or query.shape[-1] ** -0.5, softcap=float(softcap or 0.0),
                                    window=int(sliding_window or 0))
    step.present[module.layer_idx] = tuple(present)
    return out, None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, lambda *args, **kwargs: None)


class DecodeGraph(torch.nn.Module):
    """input_ids (B, T), attention_mask (B, P + T) and past.{i}.key / past.{i}.value (B, Hkv, C, D) per
    layer -> last-token logits (B, vocab) and present.{i}.key / .value (B, Hkv, C, D), the same buffers
    with rows [P, P + T) written. Positions continue from P."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
        seq = input_ids.shape[1]
        lengths = attention_mask.sum(-1)  # (B,) rows filled after this step
        positions = lengths[:, None] - seq + torch.arange(seq, device=input_ids.device)  # (B, T)
        step = CacheStep(list(zip(past[0::2], past[1::2])), lengths)
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=False, logits_to_keep=1,
                         **{STEP_KWARG: step})
        return (out.logits[:, -1, :], *step.presents())
