"""Build a tied random preset without ever holding its head's table in memory.

transformers' `from_config` builds the untied head (a vocabulary-sized `nn.Linear`), initialises it
twice (torch's default init, then the model's own), and only then ties it to the embedding: for a
262K-token vocabulary that is a transient 671 MB copy, the export's peak. Here the head is built on
the meta device instead, and the torch RNG is advanced by exactly the draws its two initialisations
would have made, so every weight (and the RNG state after) is bit-identical to plain `from_config`.
That holds because the head is the last module both built and initialised; `test_tied_preset_init`
checks it for every tied preset family.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_CHUNK = 1 << 22  # elements per RNG-advancing draw (a multiple of 16: torch's vectorised normal_ batch)


def _advance(numel: int, draw: str) -> None:
    """Consume the torch CPU RNG as `draw`-ing `numel` float32 values would (uniform_ or normal_)."""
    buffer = torch.empty(min(numel, _CHUNK))
    while numel:
        part = buffer[:min(numel, _CHUNK)]
        getattr(part, draw)()
        numel -= part.numel()


@contextlib.contextmanager
def head_on_meta(vocab_size: int) -> Iterator[list[torch.nn.Linear]]:
    """Within: a bias-free `nn.Linear` with `vocab_size` outputs is created on the meta device, its
    default (kaiming-uniform) init replaced by the same RNG draws. Yields the heads made."""
    heads: list[torch.nn.Linear] = []
    linear_init = torch.nn.Linear.__init__

    def init(self, in_features, out_features, bias=True, device=None, dtype=None):
        if out_features != vocab_size or bias or device is not None:
            return linear_init(self, in_features, out_features, bias, device, dtype)
        linear_init(self, in_features, out_features, bias, "meta", dtype)
        _advance(in_features * out_features, "uniform_")
        heads.append(self)

    torch.nn.Linear.__init__ = init
    try:
        yield heads
    finally:
        torch.nn.Linear.__init__ = linear_init


def from_config_tied(auto_class, config, **kwargs) -> torch.nn.Module:
    """`auto_class.from_config(config)` for a tied config, with the head never materialised."""
    with head_on_meta(config.vocab_size) as heads:
        model = auto_class.from_config(config, **kwargs)
    for head in heads:  # the model's own init of the head (normal_), skipped on meta, drawn here
        _advance(head.weight.numel(), "normal_")
    if any(p.is_meta for p in model.parameters()):
        raise RuntimeError("a tied head was not tied to the embedding: build this preset untied")
    return model
