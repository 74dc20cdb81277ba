"""CLI tests through the installed console script: exit codes, stdout for results, progress on stderr (bad
input: test_bad_input.py). Also the `Session` API's input errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.errors import ExecutionProviderError, ModelLoadError, ShapeError
from edgekit.exporters import families
from edgekit.runtime_ops import all_ops
from edgekit.session import Session

_SCRIPT = shutil.which("edgekit", path=str(Path(sys.executable).parent))
EDGEKIT = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "edgekit.cli"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def edgekit(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.run([*EDGEKIT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr


DHSA_FLAGS = ["--block-size", 16, "--chunk-size", 8, "--budget-tokens", 64, "--sink-tokens", 8,
              "--local-tokens", 16]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def exported(workdir):
    """Two tiny models written by `edgekit export`: dense and DHSA (fixed chunks, the paper's mean
    scoring, sparse at 100 tokens)."""
    dense = edgekit("export", "llama-tiny", "-o", workdir / "dense.onnx", "--check-tokens", 16)
    dhsa = edgekit("export", "llama-tiny", "-o", workdir / "dhsa.onnx", "--method", "dhsa", *DHSA_FLAGS,
                   "--fixed-chunks", "--chunk-score", 0, "--check-tokens", 100)
    return {"dense": (dense, workdir / "dense.onnx"), "dhsa": (dhsa, workdir / "dhsa.onnx")}


@pytest.fixture(scope="module")
def profiled(exported, workdir):
    paths = [exported["dense"][1], exported["dhsa"][1]]
    proc = edgekit("profile", *paths, "--seq-lens", "32,64", "--repeat", 1, "--json", workdir / "profile.json",
                   "--plot", workdir / "profile.png")
    return proc, paths


# ---------------------------------------------------------------------------------------------------
# listing commands


def test_ops_lists_every_op_and_attribute():
    proc = edgekit("ops")
    assert_ok(proc)
    for op in all_ops():
        assert f"edgekit.{op.name}" in proc.stdout
        for attribute in op.attributes:
            assert attribute.name in proc.stdout


def test_models_lists_families_and_presets():
    proc = edgekit("models")
    assert_ok(proc)
    for family in families():
        assert family.__name__ in proc.stdout
        assert all(name in proc.stdout for name in family.presets)
        assert all(arch in proc.stdout for arch in family.architectures)


def test_providers_lists_profiles_with_availability():
    proc = edgekit("providers")
    assert_ok(proc)
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert {"cpu", "cpu-2threads", "cpu-lowmem", "cuda", "cuda-fp16"} <= set(rows)
    assert "CPUExecutionProvider" in rows["cpu"] and "available" in rows["cpu"]
    assert "not in this onnxruntime build" in rows["cuda"]  # the CPU-only wheel


# ---------------------------------------------------------------------------------------------------
# export, profile, report


@pytest.mark.parametrize("method", ["dense", "dhsa"])
def test_export(exported, method):
    proc, path = exported[method]
    assert_ok(proc)
    assert path.is_file() and f"wrote {path}" in proc.stdout and "check: max |ONNX Runtime - PyTorch|" in proc.stdout
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgekit.method"] == method
    if method == "dhsa":
        options = json.loads(props["edgekit.options"])
        assert options["adaptive_chunks"] == 0 and options["chunk_score"] == 0 and options["budget_tokens"] == 64
        assert "budget_tokens=64" in proc.stdout


def test_profile_prints_table_and_writes_json_and_png(profiled, workdir):
    proc, paths = profiled
    assert_ok(proc)
    for path in paths:
        assert path.name in proc.stdout
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + 2 models x 2 lengths
    png = (workdir / "profile.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_profile_json_schema(profiled, workdir):
    _, paths = profiled
    data = json.loads((workdir / "profile.json").read_text())
    results = data["results"]
    assert [(r["model"], r["seq_len"]) for r in results] == [(str(p), n) for p in paths for n in (32, 64)]
    for r in results:
        assert r["status"] == "ok", r
        assert r["method"] == ("dense" if r["model"] == str(paths[0]) else "dhsa")
        assert set(r["latency_ms"]) >= {"median", "p90"}
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"] + 1e-9
        assert r["peak_rss_mb"] > 0
        assert r["speedup_vs_baseline"] > 0 and r["memory_ratio_vs_baseline"] is not None
        if r["model"] == str(paths[0]):
            assert r["speedup_vs_baseline"] == pytest.approx(1.0)
    env = data["environment"]
    assert {"cpu", "logical_cores", "memory_gb", "python", "platform", "versions", "execution_provider"} <= set(env)
    assert env["execution_provider"]["profile"] == "cpu"
    assert env["versions"]["onnxruntime"] == __import__("onnxruntime").__version__
    assert data["settings"]["baseline"] == str(paths[0])
    assert data["settings"]["schema_version"] == 2
    assert env["command"].startswith("edgekit profile ") and "--seq-lens 32,64" in env["command"]
    assert "git_commit" in env and env["gpu"] is None  # a CPU profile names no GPU


def test_report_renders_saved_json(profiled, workdir):
    proc = edgekit("report", workdir / "profile.json", "--plot", workdir / "report.png")
    assert_ok(proc)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 and all("| ok |" in line for line in table[1:])
    assert proc.stdout.strip() == profiled[0].stdout.strip()  # same table as `profile` printed
    assert (workdir / "report.png").read_bytes().startswith(PNG_MAGIC)


def test_profile_gate_against_its_own_results_passes(profiled, exported, workdir):
    """The same models against their own saved results: every change is inside threshold or noise."""
    paths = [exported["dense"][1], exported["dhsa"][1]]
    proc = edgekit("profile", *paths, "--seq-lens", "32,64", "--repeat", 3, "--compare", workdir / "profile.json",
                   "--fail-on", "latency:+400%,memory:+400%")
    assert_ok(proc)
    assert "| dense.onnx | dense | 32 tokens | latency |" in proc.stdout and "gate: 0 regression(s)" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# bad input: see test_bad_input.py (one table); a sweep whose points fail is there too


@pytest.fixture(scope="module")
def bad_inputs(workdir):
    (workdir / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    return workdir


# ---------------------------------------------------------------------------------------------------
# the Session API


@pytest.fixture(scope="module")
def session(exported):
    return Session(exported["dense"][1], ep="cpu")


def test_session_runs(session):
    out = session.run({"input_ids": np.arange(12, dtype=np.int64)[None]})
    assert out["logits"].shape == (1, 512) and np.isfinite(out["logits"]).all()
    assert session.input_names == ["input_ids"] and session.output_names[0] == "logits"


def test_session_describes_the_interface(session):
    assert session.task == "text-generation" and session.method == "dense"
    (ids,) = session.inputs
    assert (ids.name, ids.dtype, ids.dims, ids.low, ids.high) == ("input_ids", "int64", ("batch", "sequence"), 0, 512)
    assert [(o.name, o.dims) for o in session.outputs[:2]] == [("logits", ("batch", 512)),
                                                               ("present.0.key", ("batch", 2, "sequence", 16))]


def test_session_takes_a_bare_array_and_casts_int32(session):
    ids = np.arange(12)[None]
    expected = session.run({"input_ids": ids})["logits"]
    np.testing.assert_array_equal(session.run(ids)["logits"], expected)
    np.testing.assert_array_equal(session.run({"input_ids": ids.astype(np.int32)})["logits"], expected)


@pytest.mark.parametrize("feeds, named", [
    ({}, "missing model input.*input_ids"),
    ({"ids": np.zeros((1, 4), np.int64)}, "missing model input.*input_ids"),
    ({"input_ids": np.zeros((1, 4), np.int64), "extra": np.zeros(1)}, "unknown model input.*extra"),
    ({"input_ids": np.zeros((1, 4), np.float32)}, "'input_ids' must hold integers"),
    ({"input_ids": np.zeros((4,), np.int64)}, "'input_ids' must have 2 dims"),
    ({"input_ids": np.array([[1, -1, 2]])}, "'input_ids' values must be >= 0, got -1"),
    ({"input_ids": np.array([[1, 512]])}, "'input_ids' values must be < 512, got 512"),
    ([[1, 2, 3]], "feeds must be a dict"),
    ("input_ids", "feeds must be a dict"),
], ids=["missing", "misnamed", "extra", "wrong_dtype", "wrong_rank", "negative_id", "id_past_vocab", "list",
        "string"])
def test_session_bad_inputs_raise_shape_error(session, feeds, named):
    with pytest.raises(ShapeError, match=named):
        session.run(feeds)


def test_session_warns_past_the_trained_context(exported, tmp_path):
    from edgekit.errors import EdgekitWarning

    session = Session(exported["dense"][1])
    limit = session.interface.limits["sequence"]
    assert limit == 32768  # llama-tiny's max_position_embeddings
    short = np.zeros((1, 8), np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.run(short)  # no warning inside the limit
    object.__setattr__(session.interface, "limits", {"sequence": 4})
    with pytest.warns(EdgekitWarning, match="sequence 8 > 4"):
        session.run(short)


def test_session_rejects_unknown_outputs_and_threads(session, exported):
    with pytest.raises(ShapeError, match="unknown model output.*nope"):
        session.run(np.zeros((1, 4), np.int64), outputs=["nope"])
    with pytest.raises(ShapeError, match="threads must be >= 1"):
        Session(exported["dense"][1], threads=-3)


def test_session_load_errors(exported, bad_inputs):
    with pytest.raises(ModelLoadError, match="not found"):
        Session(bad_inputs / "missing.onnx")
    with pytest.raises(ModelLoadError, match="corrupt.onnx"):
        Session(bad_inputs / "corrupt.onnx")
    with pytest.raises(ExecutionProviderError, match="unknown execution-provider profile 'tpu'"):
        Session(exported["dense"][1], ep="tpu")
    with pytest.raises(ExecutionProviderError, match="CUDAExecutionProvider"):
        Session(exported["dense"][1], ep="cuda")
