"""The VLM's vision tower: a DINOv2-layout ViT run layer by layer up to the layer the projector reads, with
edgekit::FlowCutPrune after each scoring layer (method `flowcut`) or a fixed selection of patches after the
read layer (`uniform`, `random`: the honest baselines at the same count, which save no tower time).

LLaVA-1.5 reads the second-to-last layer's patch tokens (no final norm, CLS dropped); the last layer never
runs here, for every method. FlowCut's schedule is the official one: with R = read layer, layer i (0-based,
i < R) scores with layers_left = R - 1 - i, prunes when that is even, and reaches the target exactly at
layers_left = 0; the read layer then runs on target + 1 tokens. Attention is ONNX `Attention` (ONNX
Runtime's fused kernel); the op recomputes only CLS's row from q_CLS and K.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.flowcut import schedule_keep

from ..policy.encoders import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class Stage:
    """One FlowCutPrune call's attributes (after layer `layer`)."""

    layer: int
    layers_left: int
    prune: int
    accumulate: int
    static_keep: int = 0


def flowcut_schedule(read_layer: int, patches: int, keep: int, static: bool = False) -> list[Stage]:
    """The official schedule; `static` fixes each pruning stage's count at the rho = 0 schedule's."""
    stages, n = [], patches
    for i in range(read_layer):
        left = read_layer - 1 - i
        prune = int(left % 2 == 0)
        fixed = 0
        if static and prune:
            n = fixed = schedule_keep(n, keep, left)
        stages.append(Stage(i, left, prune, int(i > 0), fixed))
    return stages


def fixed_selection(method: str, patches: int, keep: int, seed: int = 0) -> torch.Tensor:
    """The baselines' patch indices (keep,), ascending: evenly spaced over the grid, or seeded random."""
    if method == "uniform":
        return torch.linspace(0, patches - 1, keep).round().long()
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(patches, generator=g)[:keep].sort().values


class VisionTower(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> read-layer patch features (B, K, C) and their grid indices (B, K)."""

    def __init__(self, vit, image_size: int, method: str = "dense", keep: int = 0, static: bool = False):
        super().__init__()
        self.vit, self.method, self.keep = vit, method, keep
        self.patches = (image_size // vit.config.patch_size) ** 2
        self.read_layer = vit.config.num_hidden_layers - 2
        self.heads = vit.config.num_attention_heads
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stages = {s.layer: s for s in flowcut_schedule(self.read_layer, self.patches, keep, static)} \
            if method == "flowcut" else {}
        if method in ("uniform", "random"):
            self.register_buffer("selection", fixed_selection(method, self.patches, keep), persistent=False)

    def layer(self, block, hidden: torch.Tensor):
        """One DINOv2 layer from its own modules; also returns q, k, v (B, H, N, d) for the op."""
        b, d = hidden.shape[0], hidden.shape[-1] // self.heads
        x = block.norm1(hidden)
        q, k, v = (proj(x).reshape(b, -1, self.heads, d).transpose(1, 2)  # (B, H, N, d)
                   for proj in (block.attention.q_proj, block.attention.k_proj, block.attention.v_proj))
        att, *_ = torch.onnx.ops.attention(q, k, v, scale=block.attention.scaling)  # (B, H, N, d)
        hidden = hidden + block.layer_scale1(block.attention.o_proj(att.transpose(1, 2).reshape(b, -1, self.heads * d)))
        hidden = hidden + block.layer_scale2(block.mlp(block.norm2(hidden)))
        return hidden, q, k, v

    def prune(self, stage: Stage, hidden, q, k, v, scores, indices):
        """One FlowCut stage after layer `stage.layer`: (hidden, indices, scores) with fewer patches (or as they
        were). A method of its own so a measurement can put another selection at the same stages."""
        return get_op("FlowCutPrune")(
            hidden, q, k, v, scores, indices, target=self.keep, layers_left=stage.layers_left, prune=stage.prune,
            accumulate=stage.accumulate, static_keep=stage.static_keep,
            scale=float(self.vit.encoder.layer[stage.layer].attention.scaling))

    def encode(self, image: torch.Tensor):
        """Read-layer tokens with CLS first (B, 1 + K, C) and the kept patches' grid indices (B, K)."""
        hidden = self.vit.embeddings((image - self.mean) / self.std)  # (B, 1 + P, C)
        b = hidden.shape[0]
        indices = torch.arange(self.patches).expand(b, -1)  # (B, P)
        scores = torch.zeros(b, self.patches)
        for i in range(self.read_layer + 1):
            hidden, q, k, v = self.layer(self.vit.encoder.layer[i], hidden)
            stage = self.stages.get(i)
            if stage is not None:
                hidden, indices, scores = self.prune(stage, hidden, q, k, v, scores, indices)
        if self.method in ("uniform", "random"):
            hidden = torch.cat([hidden[:, :1], hidden[:, 1:][:, self.selection]], 1)
            indices = self.selection.expand(b, -1)
        return hidden, indices

    def forward(self, image: torch.Tensor):
        hidden, indices = self.encode(image)
        return hidden[:, 1:], indices  # (B, K, C) CLS dropped (LLaVA's `patch` features), (B, K)
