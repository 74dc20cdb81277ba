"""Llama family (Llama 2/3, SmolLM2, TinyLlama, ...): presets are config overrides."""

from transformers import LlamaConfig

from .causal_lm import CausalLMFamily
from .gguf_writer import llama_rope_layout
from ..registry import register


@register("LlamaForCausalLM")
class Llama(CausalLMFamily):
    model_type = "llama"
    config_class = LlamaConfig
    gguf_arch = "LLAMA"
    presets = {
        # a few-MB model for tests and the quick demo
        "llama-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768),
        # big enough for attention to dominate at long context, small enough for a quick demo
        "llama-demo": dict(vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                           max_position_embeddings=32768),
        # SmolLM2-135M's exact shape with random weights: benchmarks without the real checkpoint
        "llama-smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   max_position_embeddings=32768, rope_theta=100000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True),
    }

    @classmethod
    def gguf_tensor(cls, name, array, config):
        return llama_rope_layout(name, array, config)
