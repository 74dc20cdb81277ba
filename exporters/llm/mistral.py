"""Mistral family: Llama-like; Mistral-7B-v0.1 used a sliding window on every layer (later ones do not).

The window reaches the attention functions as `sliding_window`: the dense export masks it, DHSA takes it
as an op attribute.
"""

from transformers import MistralConfig

from ..registry import register
from .causal_lm import CausalLMFamily
from .gguf_writer import check_common, llama_rope_layout, window_as_context


@register("MistralForCausalLM")
class Mistral(CausalLMFamily):
    model_type = "mistral"
    config_class = MistralConfig
    gguf_arch = "LLAMA"  # as llama.cpp's own converter writes Mistral
    presets = {
        "mistral-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=48,
                             max_position_embeddings=32768),
    }

    @classmethod
    def gguf_check(cls, config) -> None:
        check_common(config, cls.gguf_activations, "llama")

    @classmethod
    def gguf_keys(cls, config) -> dict:
        return window_as_context(config)  # llama.cpp's llama architecture has no window

    @classmethod
    def gguf_tensor(cls, name, array, config):
        return llama_rope_layout(name, array, config)
