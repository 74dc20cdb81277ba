"""Gemma2 family: alternating sliding-window / global layers and attention-logit softcapping.

Both reach the attention functions as keyword arguments (`sliding_window`, `softcap`), so the
family needs no hooks: the dense export masks the window, DHSA gets them as op attributes.
"""

from transformers import Gemma2Config

from edgekit.errors import UnsupportedModelError

from .causal_lm import CausalLMFamily
from .gguf_writer import check_common, head_dim, window_period
from ..registry import register


@register("Gemma2ForCausalLM")
class Gemma2(CausalLMFamily):
    model_type = "gemma2"
    config_class = Gemma2Config
    gguf_arch = "GEMMA2"
    gguf_activations = ("gelu_pytorch_tanh",)  # llama.cpp's GELU is the tanh approximation
    gguf_large_layers = 46  # llama.cpp takes the query scale of the 27B model (this many layers) from the shape
    presets = {
        "gemma2-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            query_pre_attn_scalar=16, sliding_window=48, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0, max_position_embeddings=32768),
    }

    @classmethod
    def gguf_check(cls, config) -> None:
        check_gemma(config, cls.gguf_activations, cls.gguf_arch.lower())
        if config.attn_logit_softcapping is None or config.final_logit_softcapping is None:
            raise UnsupportedModelError("llama.cpp's gemma2 architecture always softcaps attention and final "
                                        "logits; this model leaves one uncapped")

    @classmethod
    def gguf_keys(cls, config) -> dict:
        from gguf import Keys

        return {Keys.Attention.SLIDING_WINDOW: config.sliding_window,
                Keys.Attention.SLIDING_WINDOW_PATTERN: window_period(config),
                Keys.LLM.ATTN_LOGIT_SOFTCAPPING: float(config.attn_logit_softcapping),
                Keys.LLM.FINAL_LOGIT_SOFTCAPPING: float(config.final_logit_softcapping)}

    @classmethod
    def gguf_tensor(cls, name, array, config):
        """Norms as 1 + w; the query scale llama.cpp assumes corrected inside the query projection."""
        if name == "attn_q.weight":
            return array * query_scale_ratio(config, cls.gguf_large_layers)
        return gemma_norm(name, array)


def check_gemma(config, activations: tuple[str, ...], arch: str) -> None:
    check_common(config, activations, arch)
    if not config.tie_word_embeddings:
        raise UnsupportedModelError(f"llama.cpp's {arch} architecture ties the output head to the embedding; "
                                    "this model has its own lm_head")
    if window_period(config) is None:
        raise UnsupportedModelError(f"llama.cpp's {arch} architecture repeats one local/global layer period; "
                                    f"this model's layer types follow none: {config.layer_types}")


def gemma_norm(name: str, array):
    """Gemma's RMSNorm multiplies by (1 + w), llama.cpp's by w: the file holds 1 + w."""
    return array + 1.0 if name.endswith("norm.weight") else array


def query_scale_ratio(config, large_layers: int) -> float:
    """The model's query scale over the one llama.cpp uses: 1/sqrt(head_dim), or 1/sqrt(hidden/heads)
    for the layer count of the largest model. RoPE is linear, so the ratio can scale q before it."""
    heads = config.num_attention_heads
    llama_cpp = (config.hidden_size / heads if config.num_hidden_layers == large_layers else head_dim(config)) ** -0.5
    return float(config.query_pre_attn_scalar) ** -0.5 / llama_cpp
