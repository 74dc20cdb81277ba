"""edgekit::FlowCutPrune semantics (the parity table in test_op_parity.py covers ORT vs the reference per
sample) and the LLaVA-style VLM family on its tiny preset, every method."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import single_op_model
from edgekit.runtime_ops.flowcut import sample_inputs

OP = get_op("FlowCutPrune")


def run_ort(inputs, **attrs):
    model = single_op_model(OP, attrs, inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: x.numpy() for n, x in zip(OP.inputs, inputs)})


@pytest.mark.parametrize("temperature", [0.05, 1.0, 8.0], ids=["peaked", "plain", "flat"])
def test_kept_indices_identical_to_reference(temperature):
    x = sample_inputs(2, 197, 24, 6, 16, temperature, seed=3)
    attrs = dict(target=32, layers_left=4)
    want = OP(*x, **attrs)
    got = run_ort(x, **attrs)
    np.testing.assert_array_equal(got[1], want[1].numpy())
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[2], want[2].numpy(), atol=1e-5)


SCHEDULES = {  # attribute sets a tower chains: every adaptive distance to the read layer, first layer, static, ...
    **{f"adaptive_left{n}": dict(target=16, layers_left=n) for n in (0, 1, 2, 4, 9)},
    "first_layer_left8": dict(target=16, layers_left=8, accumulate=0),
    "static_keep24": dict(target=16, static_keep=24),
    "score_only": dict(target=16, prune=0),
    "mean_relay_left4": dict(target=16, layers_left=4, relay=0),
    "mean_relay_static20": dict(target=16, static_keep=20, relay=0),
}
TEMPERATURES = (0.02, 0.2, 8.0)  # peaked ... flat CLS attention (random weights alone are near-flat)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=SCHEDULES)
def test_ort_keeps_the_reference_tokens_over_batches_sizes_and_temperatures(schedule):
    """One session per schedule (the body's dims are symbolic), fed batch sizes x token counts (at, below and
    above the target, ragged) x temperatures: identical kept indices, values within tolerance. Random normal
    data is tie-free (ONNX TopK would send a tie to the lower index, as the reference does)."""
    attrs = SCHEDULES[schedule]
    relay = attrs.get("relay", 1)
    example = sample_inputs(1, 40, 16, 4, 8, relay=relay)
    session = ort.InferenceSession(single_op_model(OP, attrs, example).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    kept = {}
    for b in (1, 3):
        for n in (9, 16, 17, 61, 577):
            for t in TEMPERATURES:
                x = sample_inputs(b, n, 16, 4, 8, t, seed=n + b, accumulate=attrs.get("accumulate", 1), relay=relay)
                want = OP(*x, **attrs)
                got = session.run(None, {name: v.numpy() for name, v in zip(OP.inputs, x)})
                case = f"B={b} N={n} T={t}"
                np.testing.assert_array_equal(got[1], want[1].numpy(), err_msg=case)
                np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5, err_msg=case)
                np.testing.assert_allclose(got[2], want[2].numpy(), atol=1e-5, err_msg=case)
                kept[b, n, t] = got[1].shape[1]
    if attrs.get("prune", 1) and not attrs.get("static_keep") and attrs["layers_left"] > 0:
        assert kept[3, 577, 0.02] < kept[3, 577, 8.0], "the sweep must reach attention peaked enough to prune more"
    assert all(k == n - relay for (b, n, t), k in kept.items() if n - relay <= 16), "at/below target: a no-op"


def test_peaked_attention_prunes_more_than_flat():
    kept = {t: OP(*sample_inputs(1, 197, 24, 6, 16, t), target=32, layers_left=4)[1].shape[1] for t in (0.05, 8.0)}
    assert kept[0.05] < kept[8.0] <= 196


def test_kept_patches_stay_in_spatial_order_and_relay_first():
    x = sample_inputs(2, 101, 16, 4, 8, 0.2)
    x[5] = torch.arange(100).expand(2, -1).contiguous()
    hidden, idx, _ = OP(*x, target=20, layers_left=9)
    assert (idx.diff(dim=1) > 0).all()
    torch.testing.assert_close(hidden[:, 0], x[0][:, 0])
    torch.testing.assert_close(hidden[:, 1:], x[0][:, 1:].gather(1, idx[..., None].expand(-1, -1, 16)))


def test_at_or_below_target_is_a_noop_scores_untouched():
    for n in (16, 8):
        x = sample_inputs(2, n + 1, 16, 4, 8)
        got = run_ort(x, target=16, layers_left=3)
        for g, want in zip(got, (x[0], x[5], x[4])):
            np.testing.assert_array_equal(g, want.numpy())


def test_last_stage_reaches_target_exactly():
    hidden, idx, scores = OP(*sample_inputs(3, 577, 16, 6, 8, 8.0), target=64, layers_left=0)
    assert hidden.shape == (3, 65, 16) and idx.shape == scores.shape == (3, 64)


def test_static_keep_keeps_exactly_the_count():
    for t in (0.05, 8.0):
        got = run_ort(sample_inputs(2, 129, 16, 4, 8, t), static_keep=50, target=16)
        assert got[0].shape == (2, 51, 16) and got[1].shape == (2, 50) and got[1].dtype == np.int64


def test_first_layer_ignores_incoming_scores():
    x = sample_inputs(2, 50, 16, 4, 8)
    y = list(x)
    y[4] = torch.full_like(x[4], 1e6)
    a, b = OP(*x, target=10, prune=0, accumulate=0), OP(*y, target=10, prune=0, accumulate=0)
    torch.testing.assert_close(a[2], b[2])


def test_ties_resolve_to_the_lower_index():
    x = sample_inputs(1, 9, 4, 1, 4)
    x[1] = torch.zeros_like(x[1])  # uniform attention
    x[3] = torch.ones_like(x[3])  # identical values: every patch scores the same
    _, idx, _ = OP(*x, target=3, layers_left=0, accumulate=0)
    got = run_ort(x, target=3, layers_left=0, accumulate=0)
    np.testing.assert_array_equal(got[1], idx.numpy())
    np.testing.assert_array_equal(idx.numpy(), x[5][:, :3].numpy())


# ----------------------------------------------------------------------------------------------------
# the VLM family on its tiny preset (every method is also exported and run by tests/test_families.py)

from edgekit.errors import ShapeError  # noqa: E402
from edgekit.exporters import sources  # noqa: E402
from edgekit.exporters.vlm.llava import Llava  # noqa: E402
from edgekit.exporters.vlm.tower import flowcut_schedule  # noqa: E402
from edgekit.exporting import export  # noqa: E402
from edgekit.session import Session  # noqa: E402


def test_official_schedule_reaches_the_target_at_the_layer_before_the_read_layer():
    stages = flowcut_schedule(read_layer=10, patches=576, keep=64)  # DINOv2 ViT-S: 12 layers, reads layer 10
    assert [s.layer for s in stages if s.prune] == [1, 3, 5, 7, 9]
    assert stages[0].accumulate == 0 and all(s.accumulate for s in stages[1:])
    assert stages[-1].layers_left == 0
    static = [s.static_keep for s in flowcut_schedule(10, 576, 64, static=True) if s.prune]
    assert static == sorted(static, reverse=True) and static[-1] == 64


@pytest.fixture(scope="module")
def flowcut_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("vlm") / "flowcut.onnx"
    return export("llava-tiny", str(path), method="flowcut", keep=8), path


@pytest.mark.parametrize("seed, batch", [(3, 1), (4, 3)])
def test_flowcut_vlm_matches_pytorch_on_other_inputs(flowcut_model, seed, batch):
    result, path = flowcut_model
    family, model, _ = sources.load("llava-tiny")
    options, graph_options = family.split_options("flowcut", {"keep": 8})
    graph = family.prepare(model, "flowcut", options, **graph_options)
    session = Session(str(path))
    feeds = session.interface.example_inputs({"batch": batch, "sequence": 20}, seed)
    feeds["pixel_values"] = np.random.default_rng(seed).random(feeds["pixel_values"].shape, dtype=np.float32)
    got = session.run(feeds)
    with torch.no_grad():
        want = graph(*(torch.from_numpy(feeds[s.name]) for s in session.inputs))
    assert got["present.0.key"].shape[2] == 20 - 1 + 8
    for name, w in zip(got, want):
        np.testing.assert_allclose(got[name], w.numpy(), atol=2e-4, err_msg=name)


@pytest.mark.parametrize("slots, says", [((0, 0), "row 0 holds the slot token .* 0 times"),
                                         ((1, 0), "row 1 holds the slot token .* 0 times"),
                                         ((1, 2), "row 1 holds the slot token .* 2 times")])
def test_a_prompt_without_exactly_one_image_slot_is_one_line(flowcut_model, slots, says):
    session = Session(str(flowcut_model[1]))
    feeds = session.interface.example_inputs({"batch": 2, "sequence": 12})
    slot = session.interface.inputs[1].slot
    feeds["input_ids"][:] = 5
    for row, count in enumerate(slots):
        feeds["input_ids"][row, 2:2 + count] = slot
    with pytest.raises(ShapeError, match=f"{says}; put it exactly once where the image goes") as error:
        session.run(feeds)
    assert "\n" not in str(error.value)


def test_methods_keep_the_same_count_and_distinct_tokens():
    _, model, _ = sources.load("llava-tiny")
    image = torch.rand(2, 3, 64, 64)
    kept = {}
    for method in ("flowcut", "uniform", "random"):
        tower = Llava.prepare(model, method, {"keep": 12}, visual_keep=12).tower
        with torch.no_grad():
            patches, idx = tower(image)
        assert patches.shape == (2, 12, 32) and idx.shape == (2, 12)
        assert all(len(set(row.tolist())) == 12 for row in idx)
        kept[method] = idx
    assert (kept["uniform"][0] == torch.linspace(0, 63, 12).round().long()).all()


def test_static_flowcut_export_fixes_every_stage_count(tmp_path):
    import onnx

    path = tmp_path / "static.onnx"
    export("llava-tiny", str(path), method="flowcut", keep=8, static=1)
    nodes = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in onnx.load(str(path)).graph.node if n.op_type == "FlowCutPrune"]
    assert len(nodes) == 4  # 6 layers, reads layer 4: stages after layers 0..3
    assert [n["static_keep"] > 0 for n in nodes] == [bool(n["prune"]) for n in nodes]
    assert nodes[-1]["static_keep"] == 8
    session = Session(str(path))
    out = session.run(session.interface.example_inputs({"batch": 3, "sequence": 20}))
    assert out["present.1.value"].shape[:3] == (3, 2, 20 - 1 + 8)


def test_mean_relay_scores_every_token_and_keeps_none_aside():
    x = sample_inputs(2, 40, 16, 4, 8, 0.1, relay=0)
    x[5] = torch.arange(40).expand(2, -1).contiguous()
    hidden, idx, scores = OP(*x, target=10, layers_left=0, accumulate=0, relay=0)
    assert hidden.shape == (2, 10, 16) and idx.shape == scores.shape == (2, 10)
    torch.testing.assert_close(hidden, x[0].gather(1, idx[..., None].expand(-1, -1, 16)))
    p = (x[1].mean(2, keepdim=True) @ x[2].transpose(-1, -2) / 8 ** 0.5).softmax(-1).mean((1, 2))
    want = p / p.sum(-1, keepdim=True) * x[3].mean(1).abs().sum(-1)
    torch.testing.assert_close(scores, want.gather(1, idx))
    got = run_ort(x, target=10, layers_left=0, accumulate=0, relay=0)
    np.testing.assert_array_equal(got[1], idx.numpy())


def stage_of(node_name: str) -> int | None:
    """Which FlowCutPrune call (in graph order) an inlined node came from: ONNX Runtime names the first call's
    nodes `_inlfunc_FlowCutPrune_n..`, the next ones `_inlfunc_FlowCutPrune_token_{k}_n..`."""
    match = re.match(r"_inlfunc_FlowCutPrune_(?:token_(\d+)_)?n\d+", node_name)
    return None if match is None else (0 if match.group(1) is None else int(match.group(1)) + 1)


def test_every_stage_scores_before_its_layer_attention(flowcut_model, tmp_path):
    """The scoring reads the layer's K and V: run after the MLP (or just before the next stage), it reads them
    from memory again. It must run before the layer's own attention, while they are in cache."""
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "trace")
    session = ort.InferenceSession(str(flowcut_model[1]), options, providers=["CPUExecutionProvider"])
    feeds = Session(str(flowcut_model[1])).interface.example_inputs({"batch": 1, "sequence": 12})
    session.run(None, feeds)
    events = [e for e in json.loads(Path(session.end_profiling()).read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    attention = [i for i, e in enumerate(events) if e["args"]["op_name"] == "Attention"]
    first_matmul = {}
    for i, e in enumerate(events):
        stage = stage_of(e["name"])
        if stage is not None and "MatMul" in e["args"]["op_name"]:
            first_matmul.setdefault(stage, i)
    assert sorted(first_matmul) == [0, 1, 2, 3]  # stages after the tower's layers 0..3
    for stage, at in first_matmul.items():
        assert at < attention[stage], f"stage {stage} scores after layer {stage}'s attention"
