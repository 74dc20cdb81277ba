"""`export --format gguf`: model spec -> a GGUF of the dense model that llama.cpp runs (the llama.cpp baseline).

The file holds exactly the weights edgekit exports to ONNX (f32, or f16 / Q8_0 matrices for comparisons at
matched precision) and, when the source has one, its tokenizer. There is no method: llama.cpp runs its
own dense attention.
"""

from __future__ import annotations

import dataclasses

from edgekit.errors import UnsupportedModelError
from edgekit.exporters import sources
from edgekit.files import check_writable


@dataclasses.dataclass
class GGUFResult:
    path: str
    model: str
    arch: str  # llama.cpp's architecture
    gguf_type: str
    tensors: int
    vocabulary: str  # where the tokenizer came from, or "placeholder vocabulary"
    size_mb: float


def export_gguf(model: str, output: str, gguf_type: str = "f32", *, weights: str | None = None) -> GGUFResult:
    """Write a decoder LLM (preset, packaged model, Hugging Face folder or .gguf) as a GGUF for llama.cpp."""
    from gguf import GGUFReader

    from edgekit.exporters.llm.gguf_tokenizer import tokenizer_writer
    from edgekit.exporters.llm.gguf_writer import check_gguf_type, write_gguf

    check_gguf_type(gguf_type)
    check_writable(output)
    if model in sources.presets():  # a vision or policy preset fails before it is built
        check_llm(sources.presets()[model][0], model)
    family, torch_model, name = sources.load(model, weights=weights)
    check_llm(family, model)
    family.gguf_check(torch_model.config)
    add_vocab, vocabulary = tokenizer_writer(sources.tokenizer_source(model), torch_model.config.vocab_size)
    path = write_gguf(family, torch_model, output, gguf_type, name=name, tokenizer=add_vocab)
    return GGUFResult(str(path), name, family.gguf_arch.lower(), gguf_type, len(GGUFReader(str(path)).tensors),
                      vocabulary, path.stat().st_size / 1e6)


def check_llm(family, model: str) -> None:
    if family.kind != "llm":
        raise UnsupportedModelError(f"--format gguf writes decoder LLMs (llama.cpp runs those); '{model}' is "
                                    f"a {family.__name__} model (task {family.task}): export it as ONNX")
