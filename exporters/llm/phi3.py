"""Phi-3 family: fused qkv and gate/up projections, partial rotary embedding in some variants.

Both are inside the Hugging Face modules; the attention the family swaps sees ordinary (B, H, S, D) q/k/v.
"""

from transformers import Phi3Config

from ..registry import register
from .causal_lm import CausalLMFamily
from .gguf_writer import check_common, window_as_context


@register("Phi3ForCausalLM")
class Phi3(CausalLMFamily):
    model_type = "phi3"
    config_class = Phi3Config
    gguf_arch = "PHI3"
    presets = {
        "phi3-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                          original_max_position_embeddings=32768, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2),
    }

    @classmethod
    def gguf_check(cls, config) -> None:
        check_common(config, cls.gguf_activations, "phi3")

    @classmethod
    def gguf_keys(cls, config) -> dict:
        return window_as_context(config)  # llama.cpp runs phi3 without its window (Phi-3-mini has 2047)
