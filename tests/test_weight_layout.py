"""weight_layout: the rewrites that let the quantizers see (and store once) every weight are exact, and a
tied LLM head then quantizes to a quarter of its float size instead of a third."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgekit as ek
from edgekit import weight_layout

IDS = {"input_ids": (np.arange(40, dtype=np.int64)[None] * 7) % 512}


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """gemma3-tiny ties its head to the embedding, as SmolLM2 and Gemma do; torch writes the head as
    MatMul(x, Transpose(embedding))."""
    path = tmp_path_factory.mktemp("layout") / "tied.onnx"
    ek.export("gemma3-tiny", path, method="dense", check_tokens=16)
    return path


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, IDS)


def _bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def test_rewrites_are_exact_and_store_the_tied_table_once(tied):
    model = onnx.load(str(tied))
    expected = _run(model)
    table = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    assert weight_layout.fold_transposed_weights(model) == 1
    assert weight_layout.share_tied_embedding(model) == 1
    assert not [n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] == table.name]
    assert _bytes(model) == _bytes(onnx.load(str(tied)))  # the table is stored once, transposed
    for got, want in zip(_run(model), expected):
        np.testing.assert_array_equal(got, want)


def test_nothing_to_do_changes_nothing(tied):
    model = onnx.load(str(tied))
    weight_layout.fold_transposed_weights(model)
    again = onnx.ModelProto()
    again.CopyFrom(model)
    assert weight_layout.fold_transposed_weights(again) == 0
    assert again.SerializeToString() == model.SerializeToString()


def test_tied_head_is_quantized(tied, tmp_path):
    result = ek.quantize(tied, tmp_path / "int8.onnx", "int8")
    notes = "\n".join(result.notes)
    assert "float weights left: none" in notes, notes
    # every weight int8 and stored once: ~1/4 of fp32 (scales, norms and the graph are the rest)
    assert result.weights_ratio < 0.3, result.weights_ratio
    assert result.agreement.top1 is not None and result.agreement.top1 >= 0.75
