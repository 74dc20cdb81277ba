"""llama.cpp as a profiling baseline: time a GGUF model's prefill with the same interface as OnnxRunner.

llama_cpp is imported inside functions: `import edgekit.llamacpp` works without llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from pathlib import Path

from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.errors import EdgekitError, ModelLoadError, ShapeError, first_line
# ---------------------------------------------------------------------------------------------------

# a plain `pip install llama-cpp-python` compiles with -march=native, which dies (SIGILL) on VMs that
# advertise AMX without enabling it
INSTALL_HINT = "make setup-llamacpp (or python -m edgekit.llamacpp_build install) builds it for this CPU in several minutes"
MIN_CONTEXT = 256  # llama.cpp pads n_ctx to a multiple of 256 anyway
# llama.cpp's own defaults. n_batch: tokens per llama_decode call; n_ubatch: tokens per compute graph.
# A micro-batch attends only to the keys before it, so smaller ones skip masked work and keep buffers
# small: at 1024 tokens (llama-demo, 1 thread) 512 was ~10% faster than 1024. Re-measure on a quiet machine.
MAX_BATCH = 2048
MAX_UBATCH = 512
# KV-cache type name (llama-bench's -ctk / -ctv) -> llama_cpp constant; a quantized V cache needs flash attention
KV_TYPES = {"f16": "GGML_TYPE_F16", "bf16": "GGML_TYPE_BF16", "f32": "GGML_TYPE_F32", "q8_0": "GGML_TYPE_Q8_0",
            "q4_0": "GGML_TYPE_Q4_0", "q4_1": "GGML_TYPE_Q4_1", "q5_0": "GGML_TYPE_Q5_0", "q5_1": "GGML_TYPE_Q5_1"}


class LlamaCppSettings(BaseModel):
    """The knobs llama-bench tunes: what one llama.cpp measurement ran with (None: the runner's default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threads: Optional[int] = Field(None, ge=1)
    n_batch: Optional[int] = Field(None, ge=1)
    n_ubatch: Optional[int] = Field(None, ge=1)
    flash_attn: bool = True
    kv_type: Literal[tuple(KV_TYPES)] = "f16"
    mmap: bool = False

    @model_validator(mode="after")
    def _ubatch_within_batch(self):
        if self.n_batch and self.n_ubatch and self.n_ubatch > self.n_batch:
            raise ValueError(f"n_ubatch {self.n_ubatch} > n_batch {self.n_batch} (a micro-batch splits a batch)")
        return self

    def label(self) -> str:
        """`t2 b2048/512 fa kv=f16` (table cells and progress lines)."""
        batch = f"b{self.n_batch or MAX_BATCH}/{self.n_ubatch or MAX_UBATCH}"
        return " ".join([f"t{self.threads or _physical_cores()}", batch, "fa" if self.flash_attn else "no-fa",
                         f"kv={self.kv_type}", *(["mmap"] if self.mmap else [])])


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise EdgekitError(f"llama.cpp baseline needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


class LlamaCppRunner:
    """A GGUF model in llama.cpp (CPU), with the same interface as OnnxRunner.

    By default weights are read into memory at load (no mmap), so, as with ONNX Runtime, the memory a
    prefill adds above the loaded model is activations and KV cache, not weight pages faulted in by the
    first run; `settings.mmap` maps them instead (llama.cpp's own default), which a sweep may pick.
    """

    method = "llama.cpp"

    def __init__(self, path: str, threads: int | None = None, n_ctx: int = 0, flash_attn: bool = True,
                 settings: LlamaCppSettings | None = None):
        llama_cpp = _import_llama_cpp()
        if not Path(path).is_file():
            raise ModelLoadError(f"model file not found: {path}")
        self.path = path
        self.settings = settings or LlamaCppSettings(flash_attn=flash_attn)
        self.flash_attn = self.settings.flash_attn
        self.threads = self.settings.threads or threads or _physical_cores()
        context = max(n_ctx, MIN_CONTEXT) if n_ctx else 0  # 0: llama.cpp uses the trained context
        self._llama = _load_llama(llama_cpp, path, context, self.threads, self.settings)
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

    def generate(self, token_ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """Prefill, then `new_tokens` greedy tokens one llama_decode each; returns (time to the first token,
        time of the decodes after it), in seconds, as llama-bench's pp / tg tests time them."""
        import time

        start = time.perf_counter()
        self.prefill(token_ids)
        token = np.array([int(self.last_logits().argmax())], dtype=np.int32)
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            self._decode(token)
            token[0] = int(self.last_logits().argmax())
        return first - start, time.perf_counter() - first

    def last_logits(self) -> np.ndarray:
        """Logits of the last token of the latest prefill, (vocab,), copied out of llama.cpp."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()

    def describe(self) -> dict:
        """The settings this runner measured with (as llama.cpp applied them) and how llama.cpp was built."""
        return {"engine": "llama.cpp+fa" if self.flash_attn else "llama.cpp", "flash_attn": self.flash_attn,
                "threads": self.threads, "n_ctx": self.n_ctx, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
                "kv_type": self.settings.kv_type, "mmap": self.settings.mmap, "llama_cpp": _llama_cpp_version(),
                "build": build_info(self._lib)}


def build_info(llama_cpp) -> dict:
    """What the loaded library says it was compiled for (ISA features) and the CMAKE flags, when recorded."""
    from edgekit.llamacpp_build import installed_build

    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return {**installed_build(), "system_info": system_info}


def _load_llama(llama_cpp, path: str, context: int, threads: int, settings: LlamaCppSettings):
    """Llama caps n_batch at n_ctx and n_ubatch at n_batch itself (after reading the trained context)."""
    kv = getattr(llama_cpp, KV_TYPES[settings.kv_type])
    try:
        return llama_cpp.Llama(model_path=path, n_ctx=context, n_batch=settings.n_batch or MAX_BATCH,
                               n_ubatch=settings.n_ubatch or MAX_UBATCH, n_threads=threads,
                               n_threads_batch=threads, flash_attn=settings.flash_attn, type_k=kv, type_v=kv,
                               use_mmap=settings.mmap, verbose=False)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError with one-line reasons
        reason = first_line(exc).replace(f": {path}", "")
        if "llama_context" in reason:  # the model loaded; these settings do not fit it
            raise ModelLoadError(f"llama.cpp loaded {path} but cannot create a context with {settings.label()} "
                                 f"({reason}): e.g. a quantized KV cache needs flash attention and a head size "
                                 "that is a multiple of its block") from None
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
