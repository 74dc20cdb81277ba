"""Gemma3 (text) family: local sliding-window layers interleaved with global ones (5 : 1), QK-norm, and
rope settings per layer type (local layers use their own base frequency).

The layer pattern, QK-norm and per-type rope live in the Hugging Face modules; every layer hands its
`sliding_window` (None on global layers) to the attention functions, so the dense export masks the
window and DHSA takes it as an op attribute, as for Gemma2.
"""

from transformers import Gemma3TextConfig

from ..registry import register
from .causal_lm import CausalLMFamily


@register("Gemma3ForCausalLM")
class Gemma3(CausalLMFamily):
    model_type = "gemma3_text"
    config_class = Gemma3TextConfig
    presets = {
        # 3 layers, the last global: one of each kind of layer, and a window below the check length
        "gemma3-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=48, layer_types=["sliding_attention", "sliding_attention",
                                                            "full_attention"],
                            max_position_embeddings=32768),
        # Gemma-3-270M's shape with random weights (18 layers, 5 local : 1 global, window 512, one KV head
        # of 256): long-prefill benchmarks where sliding layers dominate
        "gemma3-270m": dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                            sliding_window=512, max_position_embeddings=32768, tie_word_embeddings=True),
    }
