"""Mistral family: Llama-like; Mistral-7B-v0.1 used a sliding window on every layer (later ones do not).

The window reaches the attention functions as `sliding_window`: the dense export masks it, DHSA takes it
as an op attribute.
"""

from transformers import MistralConfig

from ..registry import register
from .causal_lm import CausalLMFamily


@register("MistralForCausalLM")
class Mistral(CausalLMFamily):
    model_type = "mistral"
    config_class = MistralConfig
    presets = {
        "mistral-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=48,
                             max_position_embeddings=32768),
    }
