"""Decoder LLMs (task `text-generation`): one module per Hugging Face family on `causal_lm.py`."""

from . import gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3  # noqa: F401  (register the families)
