"""Decoder LLMs (task `text-generation`): one module per Hugging Face family on `causal_lm.py`."""

from . import gemma2, llama, qwen2  # noqa: F401  (register the families)
