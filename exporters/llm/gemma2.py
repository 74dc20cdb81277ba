"""Gemma2 family: alternating sliding-window / global layers and attention-logit softcapping.

Both reach the attention functions as keyword arguments (`sliding_window`, `softcap`), so the
family needs no hooks: the dense export masks the window, DHSA gets them as op attributes.
"""

from transformers import Gemma2Config

from .causal_lm import CausalLMFamily
from ..registry import register


@register("Gemma2ForCausalLM")
class Gemma2(CausalLMFamily):
    model_type = "gemma2"
    config_class = Gemma2Config
    presets = {
        "gemma2-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            query_pre_attn_scalar=16, sliding_window=48, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0, max_position_embeddings=32768),
    }
