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

    def __init__(self, path: str, ep: str = "cpu", threads: int | None = None, profile_prefix: str | None = None):
        from edgekit.session import Session

        self.session = Session(path, ep=ep, threads=threads, profile_prefix=profile_prefix)
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

    def __init__(self, path: str, threads: int | None = None, context: int = 0, settings=None):
        from edgekit.llamacpp import LlamaCppRunner

        self.llama = LlamaCppRunner(path, threads=threads, n_ctx=context, settings=settings)
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


class GenerationFigures:
    """llama-bench's figures over the timed runs: pp (prompt tokens/s), tg (generated tokens/s), TTFT."""

    def __init__(self, decode_tokens: int):
        self.decode_tokens = decode_tokens
        self.runs: list[tuple[float, float, float]] = []  # (ttft s, pp tokens/s, tg tokens/s)

    def figures(self, repeat: int) -> dict:
        import statistics

        timed = self.runs[-repeat:]  # the warmup runs come first
        ttft, pp, tg = (statistics.median(column) for column in zip(*timed))
        return {"decode_tokens": self.decode_tokens, "ttft_ms": ttft * 1000, "pp_tokens_per_s": pp,
                "tg_tokens_per_s": tg}


class GenerationRunner(OnnxRunner, GenerationFigures):
    """An edgekit model folder: one step is a prompt of seq_len tokens, then `decode_tokens` generated.

    Its cache holds `context` (the longest prompt) + `decode_tokens`, as llama.cpp's n_ctx does."""

    def __init__(self, folder: str, ep: str = "cpu", threads: int | None = None, decode_tokens: int = 128,
                 context: int = 0):
        from edgekit.generation import Generator

        self.generator = Generator(folder, ep=ep, threads=threads, context=context + decode_tokens if context else None)
        self.session, self.interface = self.generator.prefill, self.generator.prefill.interface
        self.task, self.method = get_task(self.interface.task), self.generator.manifest.method
        GenerationFigures.__init__(self, decode_tokens)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.generator.generate(feeds["input_ids"][0].tolist(), self.decode_tokens, ignore_eos=True)
        self.runs.append((g.ttft_s, g.prefill_tokens_per_s, g.decode_tokens_per_s))
        return feeds


class LlamaCppGeneration(LlamaCppPrefill, GenerationFigures):
    """llama.cpp's prefill then `decode_tokens` greedy single-token decodes."""

    def __init__(self, path: str, threads: int | None = None, context: int = 0, decode_tokens: int = 128):
        super().__init__(path, threads=threads, context=context + decode_tokens)
        GenerationFigures.__init__(self, decode_tokens)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = feeds["input_ids"]
        ttft, tg = self.llama.generate(ids, self.decode_tokens)
        self.runs.append((ttft, len(ids) / ttft, (self.decode_tokens - 1) / tg if tg else 0.0))
        return feeds


def runner_for(path: str, ep: str = "cpu", threads: int | None = None, context: int = 0, decode_tokens: int = 0,
               llamacpp=None):
    """Pick the runner by file type: .onnx / .ort (compiled) -> ONNX Runtime, .gguf -> llama.cpp (context:
    longest prompt; `llamacpp`: its LlamaCppSettings), an edgekit model folder -> its prefill, or prefill +
    `decode_tokens` generated."""
    from edgekit.model_folder import MANIFEST, PREFILL

    suffix = Path(path).suffix
    if (Path(path) / MANIFEST).is_file():
        return GenerationRunner(path, ep, threads, decode_tokens, context) if decode_tokens else \
            OnnxRunner(str(Path(path) / PREFILL), ep=ep, threads=threads)
    if suffix == ".gguf" and decode_tokens:
        return LlamaCppGeneration(path, threads=threads, context=context, decode_tokens=decode_tokens)
    if not Path(path).is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if suffix in (".onnx", ".ort"):
        return OnnxRunner(path, ep=ep, threads=threads)
    if suffix == ".gguf":
        return LlamaCppPrefill(path, threads=threads, context=context, settings=llamacpp)
    raise ModelLoadError(f"cannot profile {path}: expected an .onnx / .ort (ONNX Runtime) or .gguf (llama.cpp) "
                          "file")
