"""Runners: one per model format, all with the same tiny interface for the profiler.

A runner loads its model once (`__init__`); `feeds(workload, seed)` synthesises the inputs of one run
from what the model declares, and `step(feeds)` runs once and returns the feeds of the next run (a
policy's recurrent state is fed back, so every timed step sees a live state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ModelLoadError
from edgekit.tasks import get_task


class OnnxRunner:
    """An exported edgekit model in ONNX Runtime, any task."""

    def __init__(self, path: str, ep: str = "cpu", threads: int | None = None):
        from edgekit.session import Session

        self.session = Session(path, ep=ep, threads=threads)
        self.interface = self.session.interface
        if self.interface is None:
            raise ModelLoadError(f"{path} was not exported by edgekit (no edgekit.task / edgekit.inputs "
                                 "metadata): export it with `edgekit export`")
        self.task = get_task(self.interface.task)
        self.method = self.interface.method
        # Fetch the first output and the recurrent state only: an LLM's present K/V is still computed,
        # but not copied out
        recurrent = list(self.interface.recurrent)
        self.fetch = list(dict.fromkeys(self.session.output_names[:1] + recurrent))

    def feeds(self, workload: dict, seed: int = 0) -> dict[str, np.ndarray]:
        return self.interface.example_inputs(self.task.sizes(workload), seed)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.session.run(feeds, outputs=self.fetch)
        return {**feeds, **{dst: out[src] for src, dst in self.interface.recurrent.items()}}

    def describe(self) -> dict:
        return {"execution_provider": self.session.profile.name, "providers": self.session.providers,
                "session": self.session.profile.session.model_dump()}


class LlamaCppPrefill:
    """llama.cpp's prefill of a GGUF file, as a text-generation runner."""

    def __init__(self, path: str, threads: int | None = None, context: int = 0):
        from edgekit.llamacpp import LlamaCppRunner

        self.llama = LlamaCppRunner(path, threads=threads, n_ctx=context)
        self.task = get_task("text-generation")
        self.method = self.llama.method

    def feeds(self, workload: dict, seed: int = 0) -> dict[str, np.ndarray]:
        if workload.get("batch_size", 1) != 1:
            raise ModelLoadError("the llama.cpp baseline profiles batch 1 only")
        ids = np.random.default_rng(seed).integers(0, self.llama.vocab_size, size=workload["seq_len"])
        return {"input_ids": ids.astype(np.int64)}

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.llama.prefill(feeds["input_ids"])
        return feeds

    def describe(self) -> dict:
        return self.llama.describe()


def runner_for(path: str, ep: str = "cpu", threads: int | None = None, context: int = 0):
    """Pick the runner by file type: .onnx / .ort (compiled) -> ONNX Runtime, .gguf -> llama.cpp (context:
    longest prompt)."""
    suffix = Path(path).suffix
    if not Path(path).is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if suffix in (".onnx", ".ort"):
        return OnnxRunner(path, ep=ep, threads=threads)
    if suffix == ".gguf":
        return LlamaCppPrefill(path, threads=threads, context=context)
    raise ModelLoadError(f"cannot profile {path}: expected an .onnx / .ort (ONNX Runtime) or .gguf (llama.cpp) "
                          "file")
