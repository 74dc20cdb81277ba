"""Exporters: one sub-package per model kind, one module per family, registered by architecture name."""

from . import llm, policy, vision, vlm  # noqa: F401  (registers the families of each kind)
from .registry import families, family_for, presets, tasks

__all__ = ["families", "family_for", "presets", "tasks"]
