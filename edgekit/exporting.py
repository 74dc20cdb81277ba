"""`export`: model spec -> checked ONNX prefill graph on disk (dense or with an edgekit op)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import torch

from edgekit.errors import EdgekitError, ExportParityError
from edgekit.exporters import sources
from edgekit.exporters.causal_lm import METHODS
from edgekit.files import atomic_output
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import attach_functions

# DHSA attributes a user sets; the model itself supplies scale, softcap and sliding_window.
DHSA_USER_OPTIONS = ("block_size", "chunk_size", "adaptive_chunks", "length_scaled", "chunk_score", "budget_tokens",
                     "sink_tokens", "local_tokens")
DEFAULT_TOLERANCE = 1e-3  # relative to max |logit|: fp32 ONNX vs fp32 PyTorch


@dataclasses.dataclass
class ExportResult:
    path: str
    model: str
    method: str
    options: dict
    check_tokens: int
    max_abs_error: float
    tolerance: float
    size_mb: float


def dhsa_options(**options) -> dict:
    """Validate user-set DHSA options now, before any slow model loading."""
    unknown = sorted(set(options) - set(DHSA_USER_OPTIONS))
    if unknown:
        raise EdgekitError(f"unknown DHSA option {', '.join(unknown)}; known: {', '.join(DHSA_USER_OPTIONS)}")
    resolved = get_op("DHSAAttention").resolve(**options)
    return {k: resolved[k] for k in DHSA_USER_OPTIONS}


def export(model: str, output: str, method: str = "dense", check_tokens: int = 64,
           tolerance: float = DEFAULT_TOLERANCE, seed: int = 0, logits_to_keep: int = 1,
           loaded: tuple | None = None, **options) -> ExportResult:
    """Export a decoder LLM's prefill graph and check it against PyTorch before writing it.

    `loaded` reuses a `sources.load(model)` result: exporting one real model several ways loads it once.
    """
    if method not in METHODS:
        raise EdgekitError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "dense" and options:
        raise EdgekitError(f"options {', '.join(options)} only apply to --method dhsa")
    if check_tokens < logits_to_keep or logits_to_keep < 1:
        raise EdgekitError("need 1 <= logits_to_keep <= check_tokens")
    options = dhsa_options(**options) if method == "dhsa" else {}
    family, torch_model, name = loaded or sources.load(model)
    proto = attach_functions(family.to_onnx(torch_model, method, options, logits_to_keep))
    onnx.helper.set_model_props(proto, {"edgekit.model": name, "edgekit.method": method,
                                        "edgekit.options": json.dumps(options)})
    graph = family.prepare(torch_model, method, options, logits_to_keep)
    error = check_parity(proto, graph, torch_model.config.vocab_size,
                         check_tokens, tolerance, seed)
    with atomic_output(output) as tmp:
        onnx.save(proto, tmp)
    size_mb = proto.ByteSize() / 1e6
    return ExportResult(str(output), name, method, options, check_tokens, error, tolerance, size_mb)


def check_parity(proto: onnx.ModelProto, graph: torch.nn.Module, vocab: int, tokens: int,
                 tolerance: float, seed: int) -> float:
    """Max |ONNX Runtime - PyTorch| of the last-token logits on a seeded random prompt."""
    from edgekit.session import Session

    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = graph(ids)[0].numpy()
    got = Session(proto, ep="cpu").run({"input_ids": ids.numpy()}, outputs=["logits"])["logits"]
    error = float(np.abs(got - expected).max())
    limit = tolerance * max(1.0, float(np.abs(expected).max()))
    if not error <= limit:
        raise ExportParityError("logits", error, limit)
    return error
