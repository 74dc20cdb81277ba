"""Gemma3 (text) family: local sliding-window layers interleaved with global ones (5 : 1), QK-norm, and
rope settings per layer type (local layers use their own base frequency).

The layer pattern, QK-norm and per-type rope live in the Hugging Face modules; every layer hands its
`sliding_window` (None on global layers) to the attention functions, so the dense export masks the
window and DHSA takes it as an op attribute, as for Gemma2.
"""

from transformers import Gemma3TextConfig

from edgekit.errors import UnsupportedModelError

from ..registry import register
from .causal_lm import CausalLMFamily
from .gemma2 import check_gemma, gemma_norm, query_scale_ratio
from .gguf_writer import rope_parameters, window_period


@register("Gemma3ForCausalLM")
class Gemma3(CausalLMFamily):
    model_type = "gemma3_text"
    config_class = Gemma3TextConfig
    gguf_arch = "GEMMA3"
    gguf_activations = ("gelu_pytorch_tanh",)
    gguf_large_layers = 62  # the 27B model: llama.cpp then scales queries by 1/sqrt(hidden/heads)
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

    @classmethod
    def gguf_check(cls, config) -> None:
        check_gemma(config, cls.gguf_activations, cls.gguf_arch.lower())
        if getattr(config, "attn_logit_softcapping", None):
            raise UnsupportedModelError("llama.cpp's gemma3 architecture does not softcap attention logits")

    @classmethod
    def gguf_keys(cls, config) -> dict:
        """The window, its layer period and the local layers' own rope base."""
        from gguf import Keys

        keys = {Keys.Attention.SLIDING_WINDOW: config.sliding_window,
                Keys.Attention.SLIDING_WINDOW_PATTERN: window_period(config),
                Keys.Rope.FREQ_BASE: float(rope_parameters(config, "full_attention")["rope_theta"]),
                Keys.Rope.FREQ_BASE_SWA: float(rope_parameters(config, "sliding_attention")["rope_theta"])}
        if config.final_logit_softcapping:
            keys[Keys.LLM.FINAL_LOGIT_SOFTCAPPING] = float(config.final_logit_softcapping)
        return keys

    @classmethod
    def gguf_tensor(cls, name, array, config):
        """Norms (QK-norm too) as 1 + w; the query scale corrected in the query norm, which q passes last
        before RoPE (a scale on the projection would be normed away)."""
        array = gemma_norm(name, array)
        if name == "attn_q_norm.weight":
            return array * query_scale_ratio(config, cls.gguf_large_layers)
        return array
