"""Decoder-LLM prefill (task `text-generation`), shared by every causal-LM family.

The attention of a Hugging Face model is swapped through transformers' `AttentionInterface`:
`edgekit_dense` runs ONNX `Attention` (opset 23, ONNX Runtime's fused kernel: the strongest dense
baseline) and `edgekit_dhsa` runs `edgekit::DHSAAttention`. Both run eagerly in PyTorch (the
reference used to check the export) and become one ONNX node under `torch.onnx.export(dynamo=True)`.
We export with torch's dynamo exporter rather than optimum: optimum-onnx pins transformers < 4.58 and
its TorchScript path cannot emit custom-domain nodes the way `torch.onnx.ops` does.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from edgekit.errors import EdgekitError, ModelLoadError, UnsupportedModelError, first_line
from edgekit.interface import Interface, TensorSpec
from edgekit.runtime_ops import get_op

from ..family import Family, Method
from .cache_attention import HEAD_DIM_MULTIPLE
from .decode import DECODE_ATTENTION, DecodeGraph
from .gguf_writer import check_common, layer_types
from .tied_init import from_config_tied

# DHSA attributes a user sets; the model itself supplies scale, softcap and sliding_window.
DHSA_USER_OPTIONS = ("block_size", "chunk_size", "adaptive_chunks", "length_scaled", "chunk_score", "budget_tokens",
                     "sink_tokens", "local_tokens")


def _no_mask(*args, **kwargs):
    """Prefill of one unpadded sequence: the attention ops build their own causal/window masks."""
    return None


def _window_mask(seq_len: int, window: int) -> torch.Tensor:
    pos = torch.arange(seq_len)
    diff = pos[:, None] - pos[None, :]
    return (diff >= 0) & (diff < window)  # (S, S) True = attend


def _sliding_window(query, key, value, scaling, softcap, sliding_window) -> torch.Tensor:
    """A sliding-window layer costs O(S * window) in both exports: `edgekit::SlidingWindowAttention`
    (standard ops inside; ONNX Attention with is_causal while S <= window). Returns (B, S, Hq, D)."""
    out = get_op("SlidingWindowAttention")(query, key, value, window=int(sliding_window),
                                           softcap=float(softcap or 0.0), scale=float(scaling or 0.0))
    return out.transpose(1, 2).contiguous()


def dense_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                    softcap=None, sliding_window=None, **kwargs):
    """ONNX `Attention` (causal, GQA, optional softcap); sliding-window layers as above. Returns (B, S, Hq, D)."""
    if sliding_window:
        return _sliding_window(query, key, value, scaling, softcap, sliding_window), None
    if softcap and not torch.onnx.is_in_onnx_export():
        return _softcapped_attention(query, key, value, scaling, softcap).transpose(1, 2).contiguous(), None
    out, *_ = torch.onnx.ops.attention(query, key, value, is_causal=True, scale=scaling,
                                       softcap=float(softcap or 0.0))
    return out.transpose(1, 2).contiguous(), None


def _softcapped_attention(query, key, value, scaling, softcap) -> torch.Tensor:
    """Eager twin of ONNX `Attention` with softcap: cap the scores, then mask (as ONNX Runtime and Gemma2 do).

    torch's eager `torch.onnx.ops.attention` masks first, so tanh turns a masked -inf into -softcap and
    masked keys leak into the softmax. Returns (B, Hq, S, D).
    """
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)  # (B, Hq, S, S)
    scores = softcap * torch.tanh(scores / softcap)
    causal = _window_mask(query.shape[2], query.shape[2])
    return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ value


def dhsa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   softcap=None, sliding_window=None, **kwargs):
    """`edgekit::DHSAAttention` on global layers, with the options stored on the config at export time.

    A sliding-window layer keeps its window as its only key set (the window is already sparse).
    """
    if sliding_window:
        return _sliding_window(query, key, value, scaling, softcap, sliding_window), None
    options = getattr(module.config, "edgekit_dhsa", {})
    out = get_op("DHSAAttention")(query, key, value, **options, scale=float(scaling or 0.0),
                                  softcap=float(softcap or 0.0))
    return out.transpose(1, 2).contiguous(), None


# logits_to_keep -> the leading dims of the logits output (N > 1: the last N tokens, dims batch, N)
LOGITS_DIMS = {1: ("batch",), 0: ("batch", "sequence")}


for _name, _fn in (("edgekit_dense", dense_attention), ("edgekit_dhsa", dhsa_attention)):
    AttentionInterface.register(_name, _fn)
    AttentionMaskInterface.register(_name, _no_mask)


class PrefillGraph(torch.nn.Module):
    """token ids (B, S) -> logits and the present key/value cache of every layer.

    Logits are the last token's, (B, vocab); with `logits_to_keep` N > 1 the last N tokens', (B, N, vocab),
    which lets a benchmark score a known answer by teacher forcing in one prefill; with 0 every token's,
    (B, S, vocab), for perplexity (transformers reads 0 as "keep all").
    """

    def __init__(self, model: PreTrainedModel, logits_to_keep: int = 1):
        super().__init__()
        self.model = model
        self.logits_to_keep = logits_to_keep

    def forward(self, input_ids: torch.Tensor):
        # positions per row: rotary tables of batch 1 would pin the exported graph's batch to 1
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        # full cache layers only: a sliding-window layer would keep just its last window-1 keys, and the
        # decode step (which takes its positions from the cache length) needs every layer at S tokens
        out = self.model(input_ids=input_ids, position_ids=positions, cache=DynamicCache(), use_cache=True,
                         logits_to_keep=self.logits_to_keep)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        logits = out.logits[:, -1, :] if self.logits_to_keep == 1 else out.logits
        return (logits, *present)


class CausalLMFamily(Family):
    """Base of every decoder-LLM family: subclasses declare data (config class, presets)."""

    task = "text-generation"
    kind = "llm"
    methods = {
        "dense": Method("dense", doc="ONNX Attention (opset 23): ONNX Runtime's fused kernel"),
        "dhsa": Method("dhsa", op="DHSAAttention", options=DHSA_USER_OPTIONS,
                       doc="edgekit::DHSAAttention: dynamic hierarchical sparse attention for long prefill",
                       path_check_options=dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8,
                                               local_tokens=16),
                       path_check_workload={"seq_len": 160, "batch_size": 2}),
    }
    graph_options = ("logits_to_keep", "check_tokens", "step")  # step: "prefill" or "decode" (the cached step)
    config_class: ClassVar[type]
    # --format gguf: llama.cpp's architecture for the family (a gguf.MODEL_ARCH name) and its FFN activations
    gguf_arch: ClassVar[str]
    gguf_activations: ClassVar[tuple[str, ...]] = ("silu",)

    @classmethod
    def gguf_check(cls, config) -> None:
        """Refuse (UnsupportedModelError) a config llama.cpp's architecture cannot compute. By default:
        sliding-window layers, which most llama.cpp architectures do not mask."""
        check_common(config, cls.gguf_activations, cls.gguf_arch.lower())
        if "sliding_attention" in layer_types(config):
            raise UnsupportedModelError(f"llama.cpp's {cls.gguf_arch.lower()} architecture has no sliding-window "
                                        "attention, and this model has sliding-window layers")

    @classmethod
    def gguf_keys(cls, config) -> dict:
        """Keys beyond gguf_writer.shared_keys (gguf.Keys templates -> value); they override shared ones."""
        return {}

    @classmethod
    def gguf_tensor(cls, name: str, array, config):
        """A parameter in llama.cpp's layout for the architecture; `name` is its GGUF name without `blk.N.`.
        By default unchanged."""
        return array

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> PreTrainedModel:
        """A randomly initialised model of a preset's shape (seeded: the same weights every time)."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        config = cls.config_class(**cls.presets[name])
        if getattr(config, "tie_word_embeddings", False):  # same weights, without a transient head table
            return from_config_tied(AutoModelForCausalLM, config, dtype=torch.float32).eval()
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()

    @classmethod
    def from_folder(cls, path) -> PreTrainedModel:
        """A local Hugging Face folder (config.json + safetensors), in fp32."""
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
        except Exception as exc:
            raise ModelLoadError(f"cannot load weights from {path}: {first_line(exc)}") from None
        return model.eval()

    @classmethod
    def interface(cls, model: PreTrainedModel, logits_to_keep: int = 1, step: str = "prefill", **_) -> Interface:
        config = model.config
        _check_step(step, logits_to_keep)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        logits_dims = LOGITS_DIMS.get(logits_to_keep, ("batch", logits_to_keep)) + (config.vocab_size,)
        kv = ("batch", config.num_key_value_heads, "sequence" if step == "prefill" else "context", head_dim)
        kv_names = [f"{i}.{kv_name}" for i in range(config.num_hidden_layers) for kv_name in ("key", "value")]
        outputs = [TensorSpec("logits", "float32", logits_dims, doc="last-token logits")]
        outputs += [TensorSpec(f"present.{name}", "float32", kv) for name in kv_names]
        ids = TensorSpec("input_ids", "int64", ("batch", "sequence"), low=0, high=config.vocab_size,
                         doc="token ids")
        limit = getattr(config, "max_position_embeddings", 0)
        if step == "prefill":
            return Interface(task=cls.task, method="", inputs=(ids,), outputs=tuple(outputs),
                             limits={"sequence": limit} if limit else {})
        _check_head_dim(head_dim)
        mask = TensorSpec("attention_mask", "int64", ("batch", "total_sequence"), low=1, high=2,
                          doc="ones, one per token in the cache after this step (past + new)")
        past = tuple(TensorSpec(f"past.{name}", "float32", kv, doc="the cache, updated in place")
                     for name in kv_names)
        return Interface(task=cls.task, method="", inputs=(ids, mask, *past), outputs=tuple(outputs),
                         recurrent={f"present.{n}": f"past.{n}" for n in kv_names},
                         limits={"context": limit, "total_sequence": limit} if limit else {})

    @classmethod
    def prepare(cls, model: PreTrainedModel, method: str, options: dict, logits_to_keep: int = 1,
                step: str = "prefill", **_) -> torch.nn.Module:
        """Swap in the chosen attention and wrap the model as a prefill graph (or the dense decode step)."""
        model.config.edgekit_dhsa = dict(options)
        if step == "decode":
            model.set_attn_implementation(DECODE_ATTENTION)
            return DecodeGraph(model.eval())
        model.set_attn_implementation(f"edgekit_{method}")
        return PrefillGraph(model.eval(), logits_to_keep)

    @classmethod
    def dynamic_shapes(cls, interface: Interface) -> dict:
        """The decode step takes its cache as `*past`: torch.export wants those dims as one tuple."""
        shapes = super().dynamic_shapes(interface)
        past = tuple(shapes.pop(s.name) for s in interface.inputs if s.name.startswith("past."))
        return {**shapes, "past": past} if past else shapes

    @classmethod
    def check_workload(cls, check_tokens: int = 64, logits_to_keep: int = 1, step: str = "prefill",
                       **_) -> dict[str, int]:
        _check_step(step, logits_to_keep)
        if not 0 <= logits_to_keep <= check_tokens:
            raise EdgekitError("need 0 <= logits_to_keep <= check_tokens (0: every token's logits)")
        if step == "decode":  # 3 new tokens: the causal offset inside the step is checked too
            return {"seq_len": 3, "past_len": check_tokens, "batch_size": 2}
        return {"seq_len": check_tokens, "batch_size": 2}


def _check_head_dim(head_dim: int) -> None:
    if head_dim % HEAD_DIM_MULTIPLE:
        raise UnsupportedModelError(f"the decode step runs ONNX Runtime's GroupQueryAttention, whose CPU kernel needs "
                                    f"a head_dim that is a multiple of {HEAD_DIM_MULTIPLE}; this model's is "
                                    f"{head_dim}: export the prefill alone (without --with-decode)")


def _check_step(step: str, logits_to_keep: int) -> None:
    if step not in ("prefill", "decode"):
        raise EdgekitError(f"unknown graph step '{step}': prefill or decode")
    if step == "decode" and logits_to_keep != 1:
        raise EdgekitError("the decode step emits last-token logits only: logits_to_keep must be 1")
