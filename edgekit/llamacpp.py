"""llama.cpp as a profiling baseline: write a Hugging Face Llama as an f32 GGUF, then time its prefill.

Writing the GGUF ourselves (rather than using a converted checkpoint) gives llama.cpp exactly the
weights the ONNX export runs, so a latency or memory difference belongs to the runtime, not the model.
llama_cpp is imported inside functions: `import edgekit.llamacpp` works without llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import os
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, ModelLoadError, ShapeError, UnsupportedModelError, first_line
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


# ---------------------------------------------------------------------------------------------------
# Runner for the profiler
# ---------------------------------------------------------------------------------------------------

MIN_CONTEXT = 256  # llama.cpp pads n_ctx to a multiple of 256 anyway
# llama.cpp's own defaults. n_batch: tokens per llama_decode call; n_ubatch: tokens per compute graph.
# A micro-batch attends only to the keys before it, so smaller ones skip masked work and keep buffers
# small: at 1024 tokens (llama-demo, 1 thread) 512 was ~10% faster than 1024. Re-measure on a quiet machine.
MAX_BATCH = 2048
MAX_UBATCH = 512


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise EdgekitError("llama.cpp baseline needs llama-cpp-python: pip install 'edgekit[llamacpp]'") from None
    return llama_cpp


class LlamaCppRunner:
    """A GGUF model in llama.cpp (CPU), with the same interface as OnnxRunner.

    Weights are read into memory at load (no mmap), so, as with ONNX Runtime, the memory a prefill adds
    above the loaded model is activations and KV cache, not weight pages faulted in by the first run.
    """

    method = "llama.cpp"

    def __init__(self, path: str, threads: int | None = None, n_ctx: int = 0, flash_attn: bool = True):
        llama_cpp = _import_llama_cpp()
        if not Path(path).is_file():
            raise ModelLoadError(f"model file not found: {path}")
        self.path = path
        self.flash_attn = flash_attn
        self.threads = threads or _physical_cores()
        context = max(n_ctx, MIN_CONTEXT) if n_ctx else 0  # 0: llama.cpp uses the trained context
        self._llama = _load_llama(llama_cpp, path, context, self.threads, flash_attn)
        self._ctx = self._llama.ctx
        self._lib = llama_cpp
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_ubatch = llama_cpp.llama_n_ubatch(self._ctx)
        self.vocab_size = self._llama.n_vocab()

    def prefill(self, token_ids: np.ndarray) -> None:
        """One full prefill from an empty KV cache (so repeated timed runs are independent)."""
        tokens = np.ascontiguousarray(token_ids, dtype=np.int32)  # llama_token is int32
        if tokens.ndim != 1 or not 0 < len(tokens) <= self.n_ctx:
            raise ShapeError(f"llama.cpp prefill wants 1 to {self.n_ctx} token ids in a 1-D array, "
                             f"got shape {tuple(token_ids.shape)}")
        self._clear_kv_cache()
        for start in range(0, len(tokens), self.n_batch):
            self._decode(tokens[start:start + self.n_batch])

    def _clear_kv_cache(self) -> None:
        # Llama.reset() only rewinds the Python-side token count; the cache itself lives in llama.cpp
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)

    def _decode(self, chunk: np.ndarray) -> None:
        """One llama_decode over a chunk; positions continue from the cache, logits for its last token."""
        pointer = chunk.ctypes.data_as(ctypes.POINTER(self._lib.llama_token))
        code = self._lib.llama_decode(self._ctx, self._lib.llama_batch_get_one(pointer, len(chunk)))
        if code != 0:
            raise EdgekitError(f"llama.cpp decode failed with code {code} on {len(chunk)} tokens")

    def last_logits(self) -> np.ndarray:
        """Logits of the last token of the latest prefill, (vocab,), copied out of llama.cpp."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()

    def describe(self) -> dict:
        return {"engine": "llama.cpp+fa" if self.flash_attn else "llama.cpp", "flash_attn": self.flash_attn,
                "threads": self.threads, "n_ctx": self.n_ctx, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
                "mmap": False, "llama_cpp": _llama_cpp_version()}


def _load_llama(llama_cpp, path: str, context: int, threads: int, flash_attn: bool):
    """Llama caps n_batch at n_ctx and n_ubatch at n_batch itself (after reading the trained context)."""
    try:
        return llama_cpp.Llama(model_path=path, n_ctx=context, n_batch=MAX_BATCH, n_ubatch=MAX_UBATCH,
                               n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn,
                               use_mmap=False, verbose=False)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError with one-line reasons
        reason = first_line(exc).replace(f": {path}", "")
        raise ModelLoadError(f"llama.cpp cannot load {path} ({reason}): is it a complete GGUF file of an "
                             "architecture this llama.cpp knows?") from None


def _physical_cores() -> int:
    """The same default as the ONNX Runtime CPU profile: one thread per physical core."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _llama_cpp_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "unknown"
