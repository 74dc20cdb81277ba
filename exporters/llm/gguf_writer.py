"""Write a dense decoder LLM as a GGUF that llama.cpp loads: the llama.cpp baseline runs exactly its weights.

Writing the GGUF ourselves (rather than using a converted checkpoint) gives llama.cpp exactly the weights
the ONNX export runs, so a latency or memory difference belongs to the runtime, not the model. One writer
serves every family: names come from the `gguf` package's own maps (llama.cpp's), the shared hyperparameters
are written here, and each family declares the rest as data and small hooks (`CausalLMFamily.gguf_*`):
its llama.cpp architecture, extra keys, per-tensor layout changes and what it cannot express.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, UnsupportedModelError
from edgekit.files import atomic_output

# --gguf-type -> (tensor type of matrices, general.file_type); norms and biases always stay f32
GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise EdgekitError(f"unknown --gguf-type '{gguf_type}': {', '.join(GGUF_TYPES)}")


# ---------------------------------------------------------------------------------------------------
# Hugging Face -> GGUF
# ---------------------------------------------------------------------------------------------------

def write_gguf(family, model, path: str | os.PathLike, gguf_type: str = "f32", name: str | None = None,
               tokenizer=None) -> Path:
    """Write a Hugging Face causal LM of `family` as a GGUF llama.cpp runs; returns the path.

    `tokenizer(writer)` adds the vocabulary (see gguf_tokenizer.py); by default a placeholder of the right
    size, enough for token-id prompts.
    """
    from .gguf_tokenizer import add_placeholder_vocab

    check_gguf_type(gguf_type)
    config = model.config
    family.gguf_check(config)
    tensors = gguf_tensors(family, model)
    keys = {**shared_keys(config), **family.gguf_keys(config)}
    with atomic_output(path) as tmp:
        _write_file(tmp, family.gguf_arch, keys, tensors, gguf_type, name or _model_name(config),
                    tokenizer or (lambda writer: add_placeholder_vocab(writer, config.vocab_size)))
    return Path(path)


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """One layer type's rope settings: transformers 5 keeps them in config.rope_parameters, keyed by layer
    type where types differ (Gemma3); 4.x had rope_theta on the config."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params = dict(params.get(layer_type, params))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def activation(config) -> str:
    return getattr(config, "hidden_activation", None) or config.hidden_act


def layer_types(config) -> list[str]:
    """Each layer's attention kind, 'full_attention' or 'sliding_attention'."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * config.num_hidden_layers


def shared_keys(config) -> dict:
    """Hyperparameters every llama.cpp LLM architecture reads, as gguf.Keys templates -> value."""
    from gguf import Keys

    dim = head_dim(config)
    return {
        Keys.LLM.CONTEXT_LENGTH: config.max_position_embeddings,
        Keys.LLM.EMBEDDING_LENGTH: config.hidden_size,
        Keys.LLM.BLOCK_COUNT: config.num_hidden_layers,
        Keys.LLM.FEED_FORWARD_LENGTH: config.intermediate_size,
        Keys.LLM.VOCAB_SIZE: config.vocab_size,
        Keys.Attention.HEAD_COUNT: config.num_attention_heads,
        Keys.Attention.HEAD_COUNT_KV: config.num_key_value_heads or config.num_attention_heads,
        Keys.Attention.KEY_LENGTH: dim,
        Keys.Attention.VALUE_LENGTH: dim,
        Keys.Attention.LAYERNORM_RMS_EPS: float(config.rms_norm_eps),
        Keys.Rope.DIMENSION_COUNT: int(dim * rope_parameters(config).get("partial_rotary_factor", 1.0)),
        Keys.Rope.FREQ_BASE: float(rope_parameters(config)["rope_theta"]),
    }


def check_common(config, activations: tuple[str, ...], arch: str) -> None:
    """What no family's llama.cpp graph expresses: scaled rope, another activation."""
    for kind in sorted(set(layer_types(config))):
        rope_type = rope_parameters(config, kind)["rope_type"]
        if rope_type != "default":
            raise UnsupportedModelError(f"the GGUF writer supports rope_type default, got '{rope_type}'; convert "
                                        "this model with llama.cpp's convert_hf_to_gguf.py")
    if activation(config) not in activations:
        raise UnsupportedModelError(f"llama.cpp's {arch} architecture uses {', '.join(activations)}, the model "
                                    f"has hidden_act '{activation(config)}'")


def gguf_tensors(family, model) -> dict[str, np.ndarray]:
    """Every parameter as a float32 array under its llama.cpp name, in the family's llama.cpp layout.

    named_parameters() lists a tied lm_head once, under the embedding: tied models get no output.weight.
    """
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.gguf_arch], config.num_hidden_layers)
    tensors = {}
    for hf_name, param in model.named_parameters():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedModelError(f"llama.cpp's {family.gguf_arch.lower()} architecture has no tensor for "
                                        f"parameter '{hf_name}'")
        local = gguf_name.split(".", 2)[2] if gguf_name.startswith("blk.") else gguf_name  # blk.3.attn_q.weight
        array = family.gguf_tensor(local, param.detach().float().cpu().numpy(), config)
        tensors[gguf_name] = np.ascontiguousarray(array, dtype=np.float32)
    return tensors


def rope_interleave(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows (or bias entries) per head from Hugging Face's rotate-half RoPE to llama.cpp's
    adjacent pairs, which its llama architecture rotates: HF rotates (x[j], x[j + d/2]), llama.cpp
    (x[2j], x[2j + 1]). Same model, new row order."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _model_name(config) -> str:
    return Path(getattr(config, "name_or_path", "") or "edgekit-llm").name or "edgekit-llm"


# ---------------------------------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------------------------------

def _write_file(path: str, arch_name: str, keys: dict, tensors: dict[str, np.ndarray], gguf_type: str,
                name: str, add_vocab) -> None:
    import gguf

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch_name]]
    tensor_type, file_type = GGUF_TYPES[gguf_type]
    writer = gguf.GGUFWriter(path, arch)
    try:
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        for template, value in keys.items():
            _add_key(writer, template.format(arch=arch), value)
        add_vocab(writer)
        for tensor_name, array in tensors.items():
            data, raw_type = stored(array, gguf.GGMLQuantizationType[tensor_type])
            writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_key(writer, key: str, value) -> None:
    """llama.cpp checks each key's type: counts are uint32, scales float32."""
    from gguf import GGUFValueType

    if isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
        return
    kinds = {bool: GGUFValueType.BOOL, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT32,
             str: GGUFValueType.STRING}
    writer.add_key_value(key, value, kinds[type(value)])


def stored(array: np.ndarray, tensor_type):
    """A tensor as the file keeps it: vectors (norms, biases) in f32, as llama.cpp's converter does;
    matrices in the chosen type, in f16 where a row does not fill whole Q8_0 blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    if array.ndim < 2 or tensor_type == GGMLQuantizationType.F32:
        return array, GGMLQuantizationType.F32
    if tensor_type != GGMLQuantizationType.F16 and array.shape[-1] % GGML_QUANT_SIZES[tensor_type][0]:
        tensor_type = GGMLQuantizationType.F16
    if tensor_type == GGMLQuantizationType.F16:
        return array.astype(np.float16), tensor_type
    return quants.quantize(array, tensor_type), tensor_type


# ---------------------------------------------------------------------------------------------------
# layout changes several families share
# ---------------------------------------------------------------------------------------------------

ROPE_PERMUTED = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}  # tensor -> its head count


def llama_rope_layout(name: str, array: np.ndarray, config) -> np.ndarray:
    """llama.cpp's llama architecture rotates adjacent pairs: q/k rows (and biases) reordered to match."""
    attr = ROPE_PERMUTED.get(name.rsplit(".", 1)[0])
    if attr is None:
        return array
    return rope_interleave(array, getattr(config, attr) or config.num_attention_heads)


def window_as_context(config) -> dict:
    """For architectures llama.cpp runs without a window (llama, phi3) although the model has one on every
    layer: within the window full attention is the same function, so the GGUF states the window as its
    context length."""
    from gguf import Keys

    window = getattr(config, "sliding_window", None)
    return {Keys.LLM.CONTEXT_LENGTH: min(window, config.max_position_embeddings)} if window else {}


def window_period(config) -> int | None:
    """The period p of a local/global layer pattern as llama.cpp states it (layer i global iff
    i % p == p - 1), or None when the model's layer types follow no such period."""
    types = layer_types(config)
    for period in range(1, len(types) + 2):
        if all((kind == "full_attention") == (i % period == period - 1) for i, kind in enumerate(types)):
            return period
    return None
