"""The decode step's attention: GroupQueryAttention over a pre-allocated cache vs its PyTorch twin.

One small module per attribute set (heads, scale, softcap, window) is exported the way the decode graph
emits the node; many shapes (batch, new tokens, past, ragged capacities) then run through ONNX Runtime,
with optimizations off and on, both as a plain run (present is a fresh tensor) and with the present bound
to the past buffer (the in-place update a Generator relies on).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgekit.exporters.llm.cache_attention import cache_attention, gqa_reference

# (query heads, kv heads, head dim, scale, softcap, window)
ATTRS = [(4, 2, 16, 0.25, 0.0, 0), (9, 3, 64, 0.125, 5.0, 0), (4, 4, 8, 0.3, 0.0, 7), (8, 2, 16, 0.2, 5.0, 5)]
# (batch, new tokens, past rows, capacity): single steps, several tokens, empty past, a full cache; in a
# batch the first row is 2 tokens shorter (ragged rows: the mask's row sums are the lengths)
SHAPES = [(1, 1, 10, 32), (1, 1, 0, 5), (2, 1, 20, 23), (1, 3, 11, 14), (2, 3, 9, 40), (3, 5, 2, 7),
          (1, 1, 30, 31), (2, 2, 13, 15)]


class Step(torch.nn.Module):
    def __init__(self, scale, softcap, window):
        super().__init__()
        self.scale, self.softcap, self.window = scale, softcap, window

    def forward(self, query, key, value, past_key, past_value, mask):
        out, pk, pv = cache_attention(query, key, value, past_key, past_value, mask.sum(-1), self.scale,
                                      self.softcap, self.window)
        return out, pk, pv


def export(heads, kv_heads, dim, scale, softcap, window) -> bytes:
    B, T, L, C = (torch.export.Dim(n) for n in ("B", "T", "L", "C"))
    args = (torch.randn(2, heads, 3, dim), torch.randn(2, kv_heads, 3, dim), torch.randn(2, kv_heads, 3, dim),
            torch.randn(2, kv_heads, 9, dim), torch.randn(2, kv_heads, 9, dim), torch.ones(2, 7, dtype=torch.int64))
    cache = {0: B, 2: C}
    shapes = ({0: B, 2: T}, {0: B, 2: T}, {0: B, 2: T}, cache, cache, {0: B, 1: L})
    program = torch.onnx.export(Step(scale, softcap, window), args, dynamic_shapes=shapes, dynamo=True,
                                opset_version=23, verbose=False,
                                input_names=["q", "k", "v", "past_key", "past_value", "mask"],
                                output_names=["out", "present_key", "present_value"])
    return program.model_proto.SerializeToString()


@pytest.fixture(scope="module", params=ATTRS, ids=lambda a: "h{}-kv{}-d{}-s{}-cap{}-w{}".format(*a))
def exported(request):
    return request.param, export(*request.param)


def inputs(heads, kv_heads, dim, batch, new, past, capacity, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(q=torch.randn(batch, heads, new, dim, generator=g),
                k=torch.randn(batch, kv_heads, new, dim, generator=g),
                v=torch.randn(batch, kv_heads, new, dim, generator=g),
                past_key=torch.randn(batch, kv_heads, capacity, dim, generator=g),
                past_value=torch.randn(batch, kv_heads, capacity, dim, generator=g),
                mask=mask(batch, past + new, short=min(past, 2) if batch > 1 else 0))


def mask(batch: int, length: int, short: int) -> torch.Tensor:
    """(B, L) ones; the first row's last `short` entries zero (that row holds L - short tokens)."""
    ones = torch.ones(batch, length, dtype=torch.int64)
    ones[0, length - short:] = 0
    return ones


def lengths(feeds) -> list[int]:
    return feeds["mask"].sum(-1).tolist()


def reference(feeds, scale, softcap, window):
    out, pk, pv = gqa_reference(feeds["q"], feeds["k"], feeds["v"], feeds["past_key"], feeds["past_value"],
                                feeds["mask"].sum(-1), scale, softcap, window)
    return out.reshape(*out.shape[:2], -1).numpy(), pk.numpy(), pv.numpy()


def session(model: bytes, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("optimize", [False, True], ids=["opt-off", "opt-on"])
def test_plain_run_matches_the_reference(exported, optimize):
    (heads, kv_heads, dim, scale, softcap, window), model = exported
    s = session(model, optimize)
    for batch, new, past, capacity in SHAPES:
        feeds = inputs(heads, kv_heads, dim, batch, new, past, capacity)
        got = s.run(None, {k: v.numpy() for k, v in feeds.items()})
        want = reference(feeds, scale, softcap, window)
        assert got[0].reshape(want[0].shape).shape == want[0].shape
        np.testing.assert_allclose(got[0].reshape(want[0].shape), want[0], atol=2e-5, err_msg=str((batch, new, past)))
        for g, w in zip(got[1:], want[1:]):  # rows [0, P + T) the cache, zeros after
            assert g.shape == w.shape == (batch, kv_heads, capacity, dim)
            np.testing.assert_array_equal(g, w)


def test_bound_present_updates_the_past_buffer_in_place(exported):
    (heads, kv_heads, dim, scale, softcap, window), model = exported
    s = session(model, True)
    for batch, new, past, capacity in SHAPES:
        feeds = inputs(heads, kv_heads, dim, batch, new, past, capacity)
        arrays = {n: feeds[n].numpy().copy() for n in ("past_key", "past_value")}
        before = {n: a.copy() for n, a in arrays.items()}
        values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
        binding = s.io_binding()
        for name in ("q", "k", "v", "mask"):
            binding.bind_cpu_input(name, feeds[name].numpy())
        binding.bind_output("out")
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past", "present"), value)
        s.run_with_iobinding(binding)
        out, present_key, present_value = binding.get_outputs()  # in the order they were bound
        assert present_key.data_ptr() == values["past_key"].data_ptr() == arrays["past_key"].ctypes.data
        assert present_value.data_ptr() == values["past_value"].data_ptr()
        want = reference(feeds, scale, softcap, window)
        np.testing.assert_allclose(out.numpy().reshape(want[0].shape), want[0], atol=2e-5)
        for row, filled in enumerate(lengths(feeds)):
            for name, w in zip(("past_key", "past_value"), want[1:]):
                got = arrays[name][row]
                np.testing.assert_array_equal(got[:, :filled], w[row, :, :filled])  # the new rows, written
                np.testing.assert_array_equal(got[:, filled:], before[name][row, :, filled:])  # untouched


def test_the_step_is_one_group_query_attention_node(exported):
    (heads, kv_heads, _, scale, softcap, window), model = exported
    proto = onnx.load_from_string(model)
    (node,) = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    readers = [n.op_type for n in proto.graph.node if {"past_key", "past_value"} & set(n.input)]
    assert node.domain == "com.microsoft" and readers == ["GroupQueryAttention"]  # nothing else touches the cache
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == heads and attrs["kv_num_heads"] == kv_heads and attrs.get("do_rotary", 0) == 0
    got = (attrs["scale"], attrs["softcap"], attrs["local_window_size"])
    assert got == pytest.approx((scale, softcap, window or -1))
    assert list(node.output)[1:] == ["present_key", "present_value"]  # graph outputs straight from the node
