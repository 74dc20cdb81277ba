"""llama.cpp baseline: the llama.cpp runner (only with llama-cpp-python). Writing GGUFs: test_gguf.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgekit import llamacpp
from edgekit.errors import EdgekitError, ModelLoadError, ShapeError
from edgekit.exporters.llm.llama import Llama
from edgekit.exporters.sources import load
from edgekit.exporters.llm.gguf_writer import write_gguf
from edgekit.llamacpp import LlamaCppRunner

# llama.cpp keeps the KV cache in f16 and sums in another order: measured max |diff| <= 3.5e-4 x max|logit|
LOGIT_TOLERANCE = 2e-3  # x max |PyTorch logit|

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def tiny_model():
    return load("llama-tiny")[1]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    return str(write_gguf(Llama, tiny_model, tmp_path_factory.mktemp("gguf") / "llama-tiny.gguf", name="llama-tiny"))


def _tied_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True, rope_theta=50000.0)).eval()


# ------------------------------------------------------------------ the runner without llama.cpp

def test_runner_without_llama_cpp_says_how_to_install(tiny_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(EdgekitError, match=r"make setup-llamacpp \(or python -m edgekit.llamacpp_build install\)"):
        LlamaCppRunner(tiny_gguf)


def test_module_imports_without_llama_cpp():
    code = "import sys; sys.modules['llama_cpp'] = None; import edgekit.llamacpp"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ running (needs llama-cpp-python)

@pytest.fixture(scope="module")
def tiny_runner(tiny_gguf):
    pytest.importorskip("llama_cpp")
    return LlamaCppRunner(tiny_gguf, n_ctx=512)


def _torch_last_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0, -1].numpy()


def _random_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, size=n, dtype=np.int64)


@pytest.mark.llamacpp
@pytest.mark.parametrize("length", [1, 64, 300])
def test_llama_cpp_logits_match_pytorch(tiny_model, tiny_runner, length):
    ids = _random_ids(length, seed=length)
    tiny_runner.prefill(ids)
    expected = _torch_last_logits(tiny_model, ids)
    np.testing.assert_allclose(tiny_runner.last_logits(), expected, rtol=0,
                               atol=LOGIT_TOLERANCE * np.abs(expected).max())


@pytest.mark.llamacpp
def test_tied_model_matches_pytorch_in_chunks(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    model = _tied_model()
    monkeypatch.setattr(llamacpp, "MAX_BATCH", 128)  # 300 tokens -> three llama_decode calls
    runner = LlamaCppRunner(str(write_gguf(Llama, model, tmp_path / "tied.gguf")), n_ctx=512)
    ids = _random_ids(300)
    runner.prefill(ids)
    assert runner.n_batch == 128
    expected = _torch_last_logits(model, ids)
    np.testing.assert_allclose(runner.last_logits(), expected, rtol=0,
                               atol=LOGIT_TOLERANCE * np.abs(expected).max())


@pytest.mark.llamacpp
def test_each_prefill_starts_from_an_empty_kv_cache(tiny_runner):
    ids = _random_ids(200)
    tiny_runner.prefill(ids)
    first = tiny_runner.last_logits()
    tiny_runner.prefill(_random_ids(300, seed=1))  # a kept cache would shift (or overflow) the next run
    tiny_runner.prefill(ids)
    np.testing.assert_array_equal(tiny_runner.last_logits(), first)


@pytest.mark.llamacpp
def test_runner_describes_its_settings(tiny_runner):
    settings = tiny_runner.describe()
    assert settings["flash_attn"] is True and settings["llama_cpp"] == "0.3.36"
    assert settings["n_ctx"] >= 512 and settings["n_batch"] == settings["n_ubatch"] == 512
    assert tiny_runner.method == "llama.cpp" and tiny_runner.vocab_size == 512


@pytest.mark.llamacpp
def test_too_long_prompt_is_a_shape_error(tiny_runner):
    with pytest.raises(ShapeError, match="token ids"):
        tiny_runner.prefill(_random_ids(tiny_runner.n_ctx + 1))


@pytest.mark.llamacpp
@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00garbage", b"not a gguf at all"])
def test_corrupt_gguf_is_a_model_load_error(tmp_path, content):
    pytest.importorskip("llama_cpp")
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="llama.cpp cannot load"):
        LlamaCppRunner(str(path))


@pytest.mark.llamacpp
def test_truncated_gguf_is_a_model_load_error(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    path = tmp_path / "truncated.gguf"
    path.write_bytes(open(tiny_gguf, "rb").read()[:100_000])
    with pytest.raises(ModelLoadError):
        LlamaCppRunner(str(path))


@pytest.mark.llamacpp
def test_profile_runs_gguf_beside_onnx(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    from edgekit.exporting import export
    from edgekit.profiling import profile

    onnx_path = str(tmp_path / "llama-tiny.onnx")
    export("llama-tiny", onnx_path, method="dense")
    results = profile([onnx_path, tiny_gguf], [64], repeat=1)["results"]
    by_model = {r["model"]: r for r in results}
    assert by_model[onnx_path]["status"] == "ok"
    gguf_result = by_model[tiny_gguf]
    assert gguf_result["status"] == "ok", gguf_result.get("error")
    assert gguf_result["method"] == "llama.cpp" and gguf_result["runner"]["flash_attn"] is True
    assert gguf_result["speedup_vs_baseline"] > 0


@pytest.mark.llamacpp
def test_profile_decodes_with_llama_cpp(tiny_gguf):
    """--decode-tokens on a GGUF: llama.cpp's prefill then greedy steps, reported llama-bench style."""
    pytest.importorskip("llama_cpp")
    from edgekit.profiling import profile

    (row,) = profile([tiny_gguf], [48], repeat=1, warmup=0, decode_tokens=6)["results"]
    assert row["status"] == "ok", row.get("error")
    # TTFT is one 48-token prefill plus a step; tg comes from the 5 later steps' own clock
    assert 0 < row["ttft_ms"] <= row["latency_ms"]["median"]
    assert row["pp_tokens_per_s"] > 0 and row["tg_tokens_per_s"] > 0


@pytest.mark.llamacpp
def test_runner_applies_every_sweep_setting_and_records_the_build(tiny_gguf):
    from edgekit.llamacpp import LlamaCppSettings

    settings = LlamaCppSettings(threads=1, n_batch=256, n_ubatch=128, flash_attn=False, kv_type="f32", mmap=True)
    runner = LlamaCppRunner(tiny_gguf, n_ctx=512, settings=settings)
    ids = _random_ids(300)
    runner.prefill(ids)  # 300 tokens in two llama_decode calls of at most 256
    described = runner.describe()
    assert {k: described[k] for k in ("threads", "n_batch", "n_ubatch", "flash_attn", "kv_type", "mmap")} == \
        {"threads": 1, "n_batch": 256, "n_ubatch": 128, "flash_attn": False, "kv_type": "f32", "mmap": True}
    assert "AVX" in described["build"]["system_info"] or "NEON" in described["build"]["system_info"]
    assert described["build"]["version"] == "0.3.36" and "cmake_args" in described["build"]
    default = LlamaCppRunner(tiny_gguf, n_ctx=512)
    default.prefill(ids)
    expected = default.last_logits()  # f32 KV cache, no flash attention, other batching: the same logits
    np.testing.assert_allclose(runner.last_logits(), expected, rtol=0, atol=LOGIT_TOLERANCE * np.abs(expected).max())


@pytest.mark.llamacpp
def test_settings_the_model_cannot_take_say_so(tiny_gguf):
    from edgekit.llamacpp import LlamaCppSettings

    # llama-tiny's head size 16 is no multiple of q8_0's 32-value block
    with pytest.raises(ModelLoadError, match="cannot create a context with t1 b2048/512 fa kv=q8_0"):
        LlamaCppRunner(tiny_gguf, n_ctx=512, settings=LlamaCppSettings(threads=1, kv_type="q8_0"))


@pytest.mark.llamacpp
def test_profile_sweep_tunes_llama_cpp_and_records_every_trial(tiny_gguf, tmp_path):
    from edgekit import report
    from edgekit.llamacpp_sweep import SweepSpace
    from edgekit.profiling import profile

    space = SweepSpace(threads=(1,), batch=((256, 256), (256, 64)), kv_type=("f16", "q8_0"), mmap=(False,))
    results = profile([tiny_gguf], [128, 256], repeat=2, warmup=1, llamacpp_sweep=space, sweep_at=256)
    sweep, = results["llamacpp_sweeps"]
    assert len(sweep["trials"]) == space.trial_count() == 4
    q8, = [t for t in sweep["trials"] if t["settings"]["kv_type"] == "q8_0"]
    assert q8["status"] == "error" and "cannot create a context" in q8["error"]  # head size 16: never chosen
    ok = [t for t in sweep["trials"] if t["status"] == "ok"]
    assert sweep["chosen"] == min(ok, key=lambda t: t["median_ms"])["settings"]
    rows = {r["seq_len"]: r for r in results["results"]}
    assert all(r["status"] == "ok" and r["llamacpp_sweep"]["chosen"] == sweep["chosen"] for r in rows.values())
    assert rows[128]["runner"]["n_ubatch"] == sweep["chosen"]["n_ubatch"]  # applied at 128 tokens
    assert rows[256]["latency_ms"]["median"] == min(t["median_ms"] for t in ok)  # the winning trial itself
    path = tmp_path / "sweep.json"
    report.write_json(results, str(path))
    assert "(best of 4 at 256 tokens)" in report.markdown(report.load_results(str(path)))
