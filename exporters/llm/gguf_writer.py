"""Write a Hugging Face Llama as an f32 GGUF: the llama.cpp baseline runs exactly the exported weights.

Writing the GGUF ourselves (rather than using a converted checkpoint) gives llama.cpp exactly the
weights the ONNX export runs, so a latency or memory difference belongs to the runtime, not the model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgekit.errors import UnsupportedModelError
from edgekit.files import atomic_output

GGUF_ARCH = "llama"
SUPPORTED_MODEL_TYPES = ("llama",)  # Hugging Face model_type values write_gguf understands
SUPPORTED_ROPE_TYPES = ("default",)
SUPPORTED_ACTIVATIONS = ("silu",)

# Hugging Face parameter name -> GGUF tensor name, as llama.cpp's LLM_ARCH_LLAMA loads them
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",  # only present when untied; llama.cpp falls back to token_embd
}
LAYER_TENSORS = {  # under model.layers.{i}. -> under blk.{i}.
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# GGUF tensors whose rows follow llama.cpp's RoPE layout -> config attribute holding their head count
ROPE_PERMUTED = {"attn_q.weight": "num_attention_heads", "attn_k.weight": "num_key_value_heads"}

_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


# ---------------------------------------------------------------------------------------------------
# Hugging Face -> GGUF
# ---------------------------------------------------------------------------------------------------

def write_gguf(model, path: str | os.PathLike, name: str | None = None) -> Path:
    """Write a Hugging Face Llama-family model as an f32 GGUF that llama.cpp loads; returns the path.

    The vocabulary is a placeholder of the right size: the profiler feeds token ids, never text.
    """
    config = model.config
    _check_supported(config)
    tensors = gguf_tensors(model)
    with atomic_output(path) as tmp:
        _write_file(tmp, config, tensors, name or _model_name(config))
    return Path(path)


def _check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"write_gguf supports Llama-family models only (model_type {', '.join(SUPPORTED_MODEL_TYPES)}: "
            f"presets llama-tiny, llama-demo, llama-smollm2-135m or a LlamaForCausalLM folder); got "
            f"'{model_type}'. Profile this model from its ONNX export, or convert it with llama.cpp's "
            "convert_hf_to_gguf.py")
    rope_type = _rope_parameters(config).get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(f"write_gguf supports rope_type {', '.join(SUPPORTED_ROPE_TYPES)}, "
                                    f"got '{rope_type}'; convert this model with llama.cpp's convert_hf_to_gguf.py")
    if config.hidden_act not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedModelError(f"write_gguf supports hidden_act {', '.join(SUPPORTED_ACTIVATIONS)}, "
                                    f"got '{config.hidden_act}'")


def _rope_parameters(config) -> dict:
    """transformers 5 keeps rope_theta inside config.rope_parameters; 4.x had it on the config."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _model_name(config) -> str:
    return Path(getattr(config, "name_or_path", "") or "edgekit-llama").name or "edgekit-llama"


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """Every parameter as a float32 array under its GGUF name, q/k rows permuted for llama.cpp's RoPE.

    named_parameters() lists a tied lm_head once, under the embedding: tied models get no output.weight.
    """
    tensors = {}
    for hf_name, param in model.named_parameters():
        gguf_name = gguf_tensor_name(hf_name)
        array = param.detach().float().cpu().numpy()
        head_attr = ROPE_PERMUTED.get(gguf_name.split(".", 2)[-1])
        if head_attr:
            n_heads = getattr(model.config, head_attr) or model.config.num_attention_heads
            array = rope_interleave(array, n_heads)
        tensors[gguf_name] = array
    return tensors


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF name of a Hugging Face Llama parameter (tables above); unknown names are unsupported."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    match = _LAYER_NAME.fullmatch(hf_name)
    if match and match.group(2) in LAYER_TENSORS:
        return f"blk.{match.group(1)}.{LAYER_TENSORS[match.group(2)]}"
    raise UnsupportedModelError(f"write_gguf has no GGUF name for parameter '{hf_name}' (biases and extra "
                                "layers are not in llama.cpp's Llama layout)")


def rope_interleave(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows per head from Hugging Face's rotate-half RoPE to llama.cpp's adjacent pairs.

    HF rotates (x[j], x[j + d/2]); llama.cpp's Llama rotates (x[2j], x[2j + 1]). Same model, new row order.
    """
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return np.ascontiguousarray(weight.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols))


def _write_file(path: str, config, tensors: dict[str, np.ndarray], name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, GGUF_ARCH)
    try:
        _add_hyperparameters(writer, config, name)
        _add_placeholder_vocab(writer, config.vocab_size)
        for tensor_name, array in tensors.items():
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_hyperparameters(writer, config, name: str) -> None:
    import gguf

    head_dim = _head_dim(config)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)


def placeholder_vocab(vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and types llama.cpp's SentencePiece loader accepts: <unk> <s> </s>, byte tokens, fillers."""
    from gguf import TokenType

    specials = [("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL), ("</s>", TokenType.CONTROL)]
    entries = specials + [(f"<0x{b:02X}>", TokenType.BYTE) for b in range(256)]
    entries = entries[:vocab_size]
    entries += [(f"[tok{i}]", TokenType.NORMAL) for i in range(len(entries), vocab_size)]
    return [text for text, _ in entries], [int(kind) for _, kind in entries]


def _add_placeholder_vocab(writer, vocab_size: int) -> None:
    tokens, types = placeholder_vocab(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
