"""Decoder-LLM prefill export shared by every causal-LM family.

The attention of a Hugging Face model is swapped through transformers' `AttentionInterface`:
`edgekit_dense` runs ONNX `Attention` (opset 23, ONNX Runtime's fused kernel: the strongest dense
baseline) and `edgekit_dhsa` runs `edgekit::DHSAAttention`. Both run eagerly in PyTorch (the
reference used to check the export) and become one ONNX node under `torch.onnx.export(dynamo=True)`.
We export with torch's dynamo exporter rather than optimum: optimum-onnx pins transformers < 4.58 and
its TorchScript path cannot emit custom-domain nodes the way `torch.onnx.ops` does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import ClassVar

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from edgekit.runtime_ops import get_op

METHODS = ("dense", "dhsa")


def _no_mask(*args, **kwargs):
    """Prefill of one unpadded sequence: the attention ops build their own causal/window masks."""
    return None


def _window_mask(seq_len: int, window: int) -> torch.Tensor:
    pos = torch.arange(seq_len)
    diff = pos[:, None] - pos[None, :]
    return (diff >= 0) & (diff < window)  # (S, S) True = attend


def dense_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                    softcap=None, sliding_window=None, **kwargs):
    """ONNX `Attention` (causal, GQA, optional window and softcap). Returns (B, S, Hq, D)."""
    mask = _window_mask(query.shape[2], sliding_window) if sliding_window else None
    if softcap and not torch.onnx.is_in_onnx_export():
        return _softcapped_attention(query, key, value, mask, scaling, softcap).transpose(1, 2).contiguous(), None
    out, *_ = torch.onnx.ops.attention(query, key, value, attn_mask=mask, is_causal=mask is None,
                                       scale=scaling, softcap=float(softcap or 0.0))
    return out.transpose(1, 2).contiguous(), None


def _softcapped_attention(query, key, value, mask, scaling, softcap) -> torch.Tensor:
    """Eager twin of ONNX `Attention` with softcap: cap the scores, then mask (as ONNX Runtime and Gemma2 do).

    torch's eager `torch.onnx.ops.attention` masks first, so tanh turns a masked -inf into -softcap and
    masked keys leak into the softmax. Returns (B, Hq, S, D).
    """
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)  # (B, Hq, S, S)
    scores = softcap * torch.tanh(scores / softcap)
    allowed = mask if mask is not None else _window_mask(query.shape[2], query.shape[2])  # causal
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ value


def dhsa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   softcap=None, sliding_window=None, **kwargs):
    """`edgekit::DHSAAttention` with the options stored on the config at export time."""
    options = getattr(module.config, "edgekit_dhsa", {})
    out = get_op("DHSAAttention")(query, key, value, **options, scale=float(scaling or 0.0),
                                  softcap=float(softcap or 0.0), sliding_window=int(sliding_window or 0))
    return out.transpose(1, 2).contiguous(), None


for _name, _fn in (("edgekit_dense", dense_attention), ("edgekit_dhsa", dhsa_attention)):
    AttentionInterface.register(_name, _fn)
    AttentionMaskInterface.register(_name, _no_mask)


class PrefillGraph(torch.nn.Module):
    """token ids (B, S) -> logits and the present key/value cache of every layer.

    Logits are the last token's, (B, vocab); with `logits_to_keep` N > 1 the last N tokens', (B, N, vocab),
    which lets a benchmark score a known answer by teacher forcing in one prefill.
    """

    def __init__(self, model: PreTrainedModel, logits_to_keep: int = 1):
        super().__init__()
        self.model = model
        self.logits_to_keep = logits_to_keep

    def forward(self, input_ids: torch.Tensor):
        # positions per row: rotary tables of batch 1 would pin the exported graph's batch to 1
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True,
                         logits_to_keep=self.logits_to_keep)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        logits = out.logits[:, -1, :] if self.logits_to_keep == 1 else out.logits
        return (logits, *present)


class CausalLMFamily:
    """Base of every decoder-LLM family: subclasses declare data, the base class runs the export."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[dict[str, dict]] = {}
    architectures: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> PreTrainedModel:
        """A randomly initialised model of a preset's shape (seeded: the same weights every time)."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        config = cls.config_class(**cls.presets[name])
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()

    @classmethod
    def output_names(cls, model: PreTrainedModel) -> list[str]:
        layers = model.config.num_hidden_layers
        return ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    @classmethod
    def prepare(cls, model: PreTrainedModel, method: str, dhsa_options: dict,
                logits_to_keep: int = 1) -> PrefillGraph:
        """Swap in the chosen attention and wrap the model as a prefill graph."""
        model.config.edgekit_dhsa = dict(dhsa_options)
        model.set_attn_implementation(f"edgekit_{method}")
        return PrefillGraph(model.eval(), logits_to_keep)

    @classmethod
    def to_onnx(cls, model: PreTrainedModel, method: str, dhsa_options: dict, logits_to_keep: int = 1,
                example_tokens: int = 32):
        """Export the prefill graph with torch's dynamo exporter; returns an onnx.ModelProto."""
        graph = cls.prepare(model, method, dhsa_options, logits_to_keep)
        ids = torch.randint(0, model.config.vocab_size, (1, example_tokens))
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (ids,),
                input_names=["input_ids"],
                output_names=cls.output_names(model),
                dynamic_shapes={"input_ids": {0: "batch", 1: "sequence"}},
                opset_version=23,
                dynamo=True,
                verbose=False,
            )
        return declare_batch(program.model_proto, model.config.num_key_value_heads)


def declare_batch(proto, kv_heads: int):
    """Every output's first dim is the input's batch; present K/V have `kv_heads` heads.

    torch's exporter can record batch 1 in some intermediate shapes (Gemma2's scaled embedding), and ONNX
    Runtime then warns on every batch > 1 run. The interface is declared here; the intermediate
    `value_info` is dropped and ONNX Runtime infers it when it loads the model.
    """
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    del proto.graph.value_info[:]
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = batch
        if output.name.startswith("present."):
            dims[1].Clear()
            dims[1].dim_value = kv_heads
    return proto
