"""Device profiles (profiles/*.toml) are validated data: every shipped one loads and is documented; an
unknown key or a bad value names itself; the GPU memory reading never falls back to host RSS."""

from __future__ import annotations

import sys

import pytest

from edgekit.ep_profiles import available_profiles, load_profile, profiles_dir
from edgekit.errors import ExecutionProviderError
from edgekit.gpu_memory import GpuPeak


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads_and_is_documented(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert (profiles_dir() / f"{name}.toml").read_text().startswith("# ")  # a comment says what it is for


def test_the_device_profiles_ci_needs_are_there():
    assert {"cpu", "cpu-2threads", "cpu-lowmem", "cuda", "cuda-fp16"} <= set(available_profiles())
    assert load_profile("cuda-fp16").precision == "fp16" and load_profile("cuda").precision == "fp32"


def test_cpu_2threads_pins_its_pool():
    options = load_profile("cpu-2threads").session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op_thread_affinities") == "2"


@pytest.mark.parametrize("text, says", [
    ('provider = "CPUExecutionProvider"\nthreads = 2\n', "'threads': Extra inputs are not permitted"),
    ('provider = "CPUExecutionProvider"\n[session]\nintra_op_num_threads = -1\n', "'session.intra_op_num_threads'"),
    ('provider = "CPUExecutionProvider"\n[session]\ngraph_optimization_level = "max"\n',
     "'session.graph_optimization_level'"),
    ('provider = "CUDAExecutionProvider"\nprecision = "fp8"\n', "'precision'"),
    ('provider = "CPUExecutionProvider"\n[session.config_entries]\n"session.x" = 2\n', "'session.config_entries"),
    ('provider = "CPUExecutionProvider"\nname = [\n', "not valid TOML"),
], ids=["unknown_key", "negative_threads", "unknown_level", "unknown_precision", "config_entry_not_text", "toml"])
def test_bad_profiles_name_the_key(tmp_path, text, says):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ExecutionProviderError, match="bad.toml") as info:
        load_profile(path)
    assert says in str(info.value)


def test_an_fp16_profile_refuses_an_fp32_model_and_says_how_to_fix_it():
    fp16 = load_profile("cuda-fp16")
    fp16.check_precision("m-fp16.onnx", "fp16")
    with pytest.raises(ExecutionProviderError, match="expects fp16 models, but m.onnx is fp32.*--precision fp16"):
        fp16.check_precision("m.onnx", None)  # an unquantized export has no edgekit.precision: fp32
    load_profile("cpu").check_precision("m.onnx", "int4")  # "any"


def _has_gpu() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and GpuPeak().reason is None


def test_without_nvml_gpu_memory_is_null_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with GpuPeak() as gpu:
        pass
    assert gpu.fields() == {"gpu_peak_mb": None, "gpu_peak_source": "nvidia-ml-py (pynvml) is not installed"}


@pytest.mark.skipif(not _has_gpu(), reason="no GPU here: needs onnxruntime-gpu, an NVIDIA GPU and nvidia-ml-py")
def test_cuda_profile_records_gpu_peak(tmp_path):
    import edgekit

    edgekit.export("llama-tiny", str(tmp_path / "m.onnx"), check_tokens=16)
    row = edgekit.profile([str(tmp_path / "m.onnx")], [256], repeat=2, ep="cuda")["results"][0]
    assert row["status"] == "ok" and row["gpu_peak_mb"] > 0 and "NVML" in row["gpu_peak_source"]
