"""Vision-language models: a vision tower, a projector and a decoder LLM, one prefill graph."""

from . import llava  # noqa: F401
