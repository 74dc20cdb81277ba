"""weight_layout: the rewrites that let the quantizers see (and store once) every weight are exact, and a
tied LLM head then quantizes to a quarter of its float size instead of a third."""

from __future__ import annotations

from pathlib import Path

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
    MatMul(x, Transpose(embedding)), as here (edgekit's export without its own layout pass): the
    layout of ONNX files from elsewhere."""
    path = tmp_path_factory.mktemp("layout") / "tied.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weight_layout, "store_tied_head_once", lambda model: 0)
        ek.export("gemma3-tiny", path, method="dense", check_tokens=16)
    return path


def test_export_stores_the_tied_table_once_transposed(tied, tmp_path, monkeypatch):
    """edgekit's export writes the layout itself: no Transpose of a weight left for ONNX Runtime to fold
    into a second copy at load, the same bytes on disk, the same outputs bit for bit. The transposed table
    is streamed a few rows at a time (here 3 of its 64 rows)."""
    monkeypatch.setattr(weight_layout, "CHUNK_BYTES", 3 * 512 * 4)
    ek.export("gemma3-tiny", tmp_path / "laid-out.onnx", method="dense", check_tokens=16)
    model, torch_layout = onnx.load(str(tmp_path / "laid-out.onnx")), onnx.load(str(tied))
    weights = {t.name for t in model.graph.initializer}
    assert [n for n in torch_layout.graph.node if n.op_type == "Transpose" and n.input[0] in weights | {
        t.name for t in torch_layout.graph.initializer}]  # the fixture is torch's layout
    assert not [n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in weights]
    assert [n for n in model.graph.node if n.op_type == "Gather" and onnx.helper.get_node_attr_value(n, "axis") == 1]
    assert _bytes(model) == _bytes(torch_layout)
    for got, want in zip(_run(model), _run(torch_layout)):
        np.testing.assert_array_equal(got, want)


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


@pytest.mark.parametrize("precision, bits, block", [("int8-block", 8, 32), ("int4", 4, 32), ("int4", 4, 128)])
def test_weight_only_lookup_reads_the_heads_blocks(tied, tmp_path, precision, bits, block):
    """int8-block / int4: the tied table is stored once, as the head's packed blocks; every row the lookup
    returns is the row the head dequantizes (GatherBlockQuantized over the same initializer). Block 128 >
    the hidden size 64: MatMulNBits pads K, and the lookup drops the padding."""
    result = ek.quantize(tied, tmp_path / "q.onnx", precision, block_size=block)
    model = onnx.load(result.path)
    ops = [n.op_type for n in model.graph.node]
    weights = {t.name for t in model.graph.initializer}
    assert ops.count("GatherBlockQuantized") == 1, ops
    assert not [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    (lookup,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    heads = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == lookup.input[0]]
    assert len(heads) == 1  # the head's B initializer, shared
    assert {a.name: onnx.helper.get_attribute_value(a) for a in lookup.attribute}["bits"] == bits
    # nothing else holds a table-sized tensor (64 x 512; packed 4-bit is half as many bytes): the float
    # table and an int8 copy of it are gone
    big = [t.name for t in model.graph.initializer if np.prod(t.dims) >= 0.4 * 64 * 512]
    assert big == [lookup.input[0]], big
    # the embedding rows equal the dequantized head rows, exactly
    values = _embedding_rows(model, lookup)
    heads_table = _dequantized(model, heads[0])
    # (int8 compute of the probe quantizes I_K per block: 1.0 round-trips within float rounding)
    np.testing.assert_allclose(values, heads_table[IDS["input_ids"][0]], rtol=1e-5, atol=1e-7)
    # the ORT format holds it (uint8 blocks, not 4-bit tensor types), and it runs with no CPU fallback
    compiled = ek.compile_model(result.path, tmp_path / "q.ort", "cpu", fmt="ort", strict_ep=True)
    assert Path(compiled.path).stat().st_size > 0
    # random weights give flat logits; a 4-bit embedding lands at ~0.4 here, a broken lookup near 1/512
    assert result.agreement.top1 is not None and result.agreement.top1 >= (0.7 if bits == 8 else 0.25)


def _embedding_rows(model: onnx.ModelProto, lookup: onnx.NodeProto) -> np.ndarray:
    """The embedding the graph computes: the tensor the rewrite's nodes are named after, (1, S, 64)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    out = lookup.name.removesuffix("/lookup")
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    (rows,) = session.run([out], IDS)
    assert rows.shape == (1, IDS["input_ids"].shape[1], 64)
    return rows[0]


def _dequantized(model: onnx.ModelProto, head: onnx.NodeProto) -> np.ndarray:
    """The rows the head's MatMulNBits multiplies by, from ONNX Runtime itself: the node run on I_K, (N, K)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    k = attrs["K"]
    weights = [t for t in model.graph.initializer if t.name in head.input[1:]]
    node = helper.make_node("MatMulNBits", ["x", *head.input[1:]], ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializer=weights)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    probe.ir_version = 10
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.eye(k, dtype=np.float32)})[0].T
