"""LITv2 in plain PyTorch (tiny config): shapes, methods, ONNX export with symbolic H/W, weight loading."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from edgekit.errors import InvalidAttributeError, ModelLoadError, ShapeError
from edgekit.exporters.vision.litv2 import (DTM, LITV2_CONFIGS, METHODS, Merge, deformable_merge, litv2, load_weights,
                                            to_onnx)

# ours -> LITv2's names, written out by hand from the official code (the inverse of NAME_MAP)
TO_LITV2 = (
    (r"^stages\.3\.blocks\.(\d+)\.attn\.(q|kv|proj)\.", lambda m: f"layers.3.blocks.{m[1]}.attn.l_{m[2]}."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.hi_", lambda m: f"layers.{m[1]}.blocks.{m[2]}.attn.h_"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.lo_", lambda m: f"layers.{m[1]}.blocks.{m[2]}.attn.l_"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn_norm\.", lambda m: f"layers.{m[1]}.blocks.{m[2]}.norm1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn_norm\.", lambda m: f"layers.{m[1]}.blocks.{m[2]}.norm2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.dwconv\.", lambda m: f"layers.{m[1]}.blocks.{m[2]}.mlp.dwconv.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.", lambda m: f"layers.{m[1]}.blocks.{m[2]}.mlp."),
    (r"^stages\.(\d+)\.merge\.conv_offset\.", lambda m: f"layers.{m[1]}.downsample.dconv.conv_offset."),
    (r"^stages\.(\d+)\.merge\.conv\.", lambda m: f"layers.{m[1]}.downsample.dconv."),
    (r"^stages\.(\d+)\.merge\.norm\.", lambda m: f"layers.{m[1]}.downsample.norm_layer."),
)


def litv2_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under LITv2's names."""
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, repl in TO_LITV2:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        state[name] = tensor.clone()
    return state


def tiny(method="hilo", seed=0):
    """The tiny model with weights far from their init, so outputs and mismatches are not near zero."""
    model = litv2("litv2-tiny", method, seed=seed, num_classes=10)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_configs_follow_litv2():
    assert LITV2_CONFIGS["litv2-s"] == dict(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24))
    params = sum(p.numel() for p in litv2("litv2-s").parameters())
    assert 27e6 < params < 29e6  # the paper's LITv2-S: 28M


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_at_two_sizes(method):
    model = tiny(method)
    with torch.no_grad():
        for H, W in [(64, 64), (96, 160)]:
            logits = model(torch.randn(2, 3, H, W))
            assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_methods_differ_only_in_stage_3():
    names = {m: set(tiny(m).state_dict()) for m in METHODS}
    stage3 = re.compile(r"^stages\.2\.blocks\.\d+\.attn\.")
    shared = {m: {n for n in names[m] if not stage3.match(n)} for m in METHODS}
    assert all(shared[m] == shared["hilo"] for m in METHODS)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(ShapeError, match="multiples of 32"):
        tiny()(torch.randn(1, 3, 64, 72))
    with pytest.raises(ShapeError, match=r"\(B, 3, H, W\)"):
        tiny()(torch.randn(1, 1, 64, 64))
    with pytest.raises(InvalidAttributeError, match="method"):
        litv2("litv2-tiny", "linear")


@functools.lru_cache(maxsize=None)
def exported(method):
    model = tiny(method)
    proto = to_onnx(model)
    return model, proto, ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("method", ["hilo", "msa"])
def test_onnx_runtime_matches_pytorch_at_two_sizes_from_one_file(method):
    model, _, session = exported(method)
    assert session.get_inputs()[0].shape[2:] != [64, 64]  # symbolic, not the example size
    for B, H, W in [(1, 64, 64), (3, 96, 128)]:
        image = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(H))
        with torch.no_grad():
            expected = model(image).numpy()
        (got,) = session.run(None, {"image": image.numpy()})
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_hilo_export_holds_one_edgekit_node_per_stage3_block():
    _, model, _ = exported("hilo")
    assert [n.op_type for n in model.graph.node if n.domain == "edgekit"] == ["HiLoAttention"] * 2
    assert [f.name for f in model.functions if f.domain == "edgekit"] == ["HiLoAttention"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_litv2_named_checkpoint_round_trips(tmp_path, suffix):
    source, target = tiny(seed=1), tiny(seed=2)
    path = tmp_path / f"litv2{suffix}"
    state = litv2_state_dict(source)
    if suffix == ".pth":
        torch.save({"model": state, "epoch": 300}, path)  # LITv2's released layout, nested under "model"
    else:
        save_file(state, str(path))
    load_weights(target, path)
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_missing_and_wrong_shaped_tensors_are_named(tmp_path):
    state = litv2_state_dict(tiny())
    del state["layers.2.blocks.1.attn.l_kv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ModelLoadError, match=r"missing stages\.2\.blocks\.1\.attn\.lo_kv\.weight \(1 missing"):
        load_weights(tiny(), tmp_path / "missing.pth")
    state = litv2_state_dict(tiny())
    state["head.weight"] = torch.zeros(7, 128)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ModelLoadError, match=r"head\.weight has shape \[7, 128\], expected \[10, 128\]"):
        load_weights(tiny(), tmp_path / "wrong.pth")
    with pytest.raises(ModelLoadError, match="unexpected"):  # a HiLo checkpoint does not fit the MSA network
        load_weights(tiny("msa"), tmp_path / "missing.pth")


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"head.weight": torch.zeros(1)}, "hook": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match=r"refused by weights-only loading \(it pickles a [\w.]*NotATensor"):
        load_weights(tiny(), tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_weights(tiny(), tmp_path / "absent.pth")


def bilinear(image, y, x):
    """image (C, H, W) at real (y, x): the four neighbours' blend, zero outside (LITv2's DCN kernel)."""
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(image.shape[0])
    for row, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for col, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= row < image.shape[1] and 0 <= col < image.shape[2]:
                out += wy * wx * image[:, row, col]
    return out


def deformable_conv_by_hand(image, offset, weight, bias):
    B, _, Ho, Wo = offset.shape
    out = torch.zeros(B, weight.shape[0], Ho, Wo)
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                acc = bias.clone()
                for t, (ky, kx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
                    dy, dx = offset[b, 2 * t, i, j].item(), offset[b, 2 * t + 1, i, j].item()
                    acc += weight[:, :, ky, kx] @ bilinear(image[b], 2 * i + ky + dy, 2 * j + kx + dx)
                out[b, :, i, j] = acc
    return out


@pytest.mark.parametrize("H, W, spread", [(6, 8, 1.5), (4, 4, 3.0), (2, 2, 0.7)])
def test_deformable_merge_matches_a_hand_written_deformable_conv(H, W, spread):
    g = torch.Generator().manual_seed(H)
    image, weight, bias = torch.randn(2, 3, H, W, generator=g), torch.randn(5, 3, 2, 2, generator=g), torch.randn(5)
    offset = torch.randn(2, 8, H // 2, W // 2, generator=g) * spread  # some samples fall off the map
    expected = deformable_conv_by_hand(image, offset, weight, bias)
    torch.testing.assert_close(deformable_merge(image, offset, weight, bias), expected, rtol=0, atol=1e-5)


def test_dtm_with_zero_offsets_is_the_plain_strided_conv():
    dtm, conv = DTM(8).eval(), Merge(8).eval()
    conv.load_state_dict({k: v for k, v in dtm.state_dict().items() if "offset" not in k})
    x = torch.randn(2, 6, 10, 8)
    torch.testing.assert_close(dtm(x), conv(x), rtol=0, atol=1e-5)


def test_offset_free_merge_refuses_a_dtm_checkpoint(tmp_path):
    torch.save(litv2_state_dict(tiny()), tmp_path / "dtm.pth")
    plain = litv2("litv2-tiny", merge="conv", num_classes=10)
    assert plain(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ModelLoadError, match=r"unexpected stages\.0\.merge\.conv_offset\.weight \(0 missing, 6 unexp"):
        load_weights(plain, tmp_path / "dtm.pth")
    with pytest.raises(InvalidAttributeError, match="merge"):
        litv2("litv2-tiny", merge="deformable")
