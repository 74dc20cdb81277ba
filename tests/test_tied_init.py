"""A tied random preset is built with its head on the meta device (`exporters/llm/tied_init.py`): the
weights and the torch RNG state after must be exactly those of plain `from_config`, in every LLM family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgekit.exporters import presets
from edgekit.exporters.llm import tied_init
from edgekit.exporters.llm.causal_lm import CausalLMFamily

TINY = sorted(name for name, (family, *_) in presets().items()
              if issubclass(family, CausalLMFamily) and name.endswith("-tiny"))


def _built(build, config):
    torch.manual_seed(0)
    model = build(AutoModelForCausalLM, config)
    return model.state_dict(), torch.get_rng_state()


@pytest.mark.parametrize("chunk", [tied_init._CHUNK, 1024])  # 1024: the RNG advanced over many draws
@pytest.mark.parametrize("name", TINY)
def test_tied_preset_init_is_plain_from_config(name, chunk, monkeypatch):
    monkeypatch.setattr(tied_init, "_CHUNK", chunk)
    family = presets()[name][0]
    config = family.config_class(**{**family.presets[name], "tie_word_embeddings": True})
    want, want_rng = _built(lambda auto, c: auto.from_config(c, dtype=torch.float32), config)
    got, got_rng = _built(lambda auto, c: tied_init.from_config_tied(auto, c, dtype=torch.float32), config)
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert torch.equal(want_rng, got_rng)


def test_tied_head_is_the_embedding():
    model = presets()["gemma3-tiny"][0].from_preset("gemma3-tiny")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters())
