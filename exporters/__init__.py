"""Exporters, one module per model family, registered by Hugging Face architecture name."""

from . import gemma2, llama, qwen2  # noqa: F401  (register the families)
from .registry import families, family_for, presets

__all__ = ["families", "family_for", "presets"]
