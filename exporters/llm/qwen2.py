"""Qwen2 family (Qwen2, Qwen2.5): Llama-like with q/k/v biases."""

from transformers import Qwen2Config

from .causal_lm import CausalLMFamily
from ..registry import register


@register("Qwen2ForCausalLM")
class Qwen2(CausalLMFamily):
    model_type = "qwen2"
    config_class = Qwen2Config
    gguf_arch = "QWEN2"
    presets = {
        "qwen2-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768),
    }
