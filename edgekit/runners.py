"""Prefill runners: one per model format, all with the same tiny interface for the profiler.

A runner loads its model once (`__init__`), then `prefill(token_ids)` runs one timed prefill.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ModelLoadError


class OnnxRunner:
    """An exported edgekit model in ONNX Runtime."""

    def __init__(self, path: str, ep: str = "cpu", threads: int | None = None):
        from edgekit.session import Session

        self.session = Session(path, ep=ep, threads=threads)
        meta = self.session._session.get_modelmeta().custom_metadata_map
        self.method = meta.get("edgekit.method", "onnx")
        self.vocab_size = _static_dim(self.session._session.get_outputs()[0].shape)
        self.first_output = self.session.output_names[:1]

    def prefill(self, token_ids: np.ndarray) -> None:
        # Fetch only the logits: present K/V are still computed, but not copied out
        self.session.run({"input_ids": token_ids[None, :]}, outputs=self.first_output)

    def describe(self) -> dict:
        return {"execution_provider": self.session.profile.name, "providers": self.session.providers,
                "session": dict(self.session.profile.session)}


def _static_dim(shape) -> int:
    last = shape[-1] if shape else None
    return last if isinstance(last, int) else 100


def runner_for(path: str, ep: str = "cpu", threads: int | None = None, context: int = 0):
    """Pick the runner by file type: .onnx -> ONNX Runtime, .gguf -> llama.cpp (context: longest prompt)."""
    suffix = Path(path).suffix
    if not Path(path).is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if suffix == ".onnx":
        return OnnxRunner(path, ep=ep, threads=threads)
    if suffix == ".gguf":
        from edgekit.llamacpp import LlamaCppRunner

        return LlamaCppRunner(path, threads=threads, n_ctx=context)
    raise ModelLoadError(f"cannot profile {path}: expected an .onnx (ONNX Runtime) or .gguf (llama.cpp) file")
