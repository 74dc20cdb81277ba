"""What every (query, key, value) attention op shares: the shape check and parity-sample inputs."""

from __future__ import annotations

import torch

from edgekit.errors import ShapeError

from .registry import Sample


def check_qkv(op_name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """query (B, Hq, S, D), key and value (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query)."""
    if query.dim() != 4 or key.dim() != 4 or key.shape != value.shape:
        raise ShapeError(f"{op_name} wants 4-D (B, H, S, D) inputs, got {list(query.shape)}, "
                         f"{list(key.shape)}, {list(value.shape)}")
    if query.shape[1] % key.shape[1] or query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
        raise ShapeError(f"{op_name}: query {list(query.shape)} does not fit key {list(key.shape)} "
                         f"(needs same B, S, D and query heads a multiple of key heads)")


def qkv_sample(name: str, B: int, Hq: int, Hkv: int, S: int, D: int, atol: float = 1e-5, **attrs) -> Sample:
    """A parity row of seeded standard-normal q/k/v."""
    def inputs(seed: int = 0) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(B, Hq, S, D, generator=g),  # query (B, Hq, S, D)
                torch.randn(B, Hkv, S, D, generator=g),  # key   (B, Hkv, S, D)
                torch.randn(B, Hkv, S, D, generator=g)]  # value (B, Hkv, S, D)

    return Sample(name, inputs, attrs, atol)
