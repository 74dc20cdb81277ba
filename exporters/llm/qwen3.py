"""Qwen3 family: Llama-like with per-head RMSNorm on queries and keys (QK-norm), no q/k/v biases.

QK-norm runs before RoPE inside the Hugging Face attention module, so the swapped attention sees
normed, rotated q/k and the family needs no hooks.
"""

from transformers import Qwen3Config

from ..registry import register
from .causal_lm import CausalLMFamily


@register("Qwen3ForCausalLM")
class Qwen3(CausalLMFamily):
    model_type = "qwen3"
    config_class = Qwen3Config
    gguf_arch = "QWEN3"
    presets = {
        "qwen3-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=32768),
    }
