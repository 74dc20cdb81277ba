"""llama.cpp baseline: GGUF writing (always) and the llama.cpp runner (only with llama-cpp-python)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from edgekit import llamacpp
from edgekit.errors import EdgekitError, ModelLoadError, ShapeError, UnsupportedModelError
from edgekit.exporters.sources import load
from edgekit.exporters.llm.gguf_writer import rope_interleave, write_gguf
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
    return str(write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "llama-tiny.gguf", name="llama-tiny"))


def _tied_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True, rope_theta=50000.0)).eval()


def _fields(path) -> dict:
    reader = GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(str(path)).tensors}


# ------------------------------------------------------------------ writing (no llama.cpp needed)

def test_gguf_header_holds_what_llama_cpp_needs(tiny_model, tiny_gguf):
    config, fields = tiny_model.config, _fields(tiny_gguf)
    expected = {
        "general.architecture": "llama", "general.name": "llama-tiny", "general.file_type": 0,
        "llama.context_length": config.max_position_embeddings, "llama.embedding_length": 64,
        "llama.block_count": 2, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.attention.key_length": 16, "llama.rope.dimension_count": 16,
        "tokenizer.ggml.model": "llama",
    }
    assert {key: fields[key] for key in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(set(tokens)) == len(fields["tokenizer.ggml.token_type"]) == config.vocab_size


def test_gguf_tensors_have_llama_cpp_names_shapes_and_values(tiny_model, tiny_gguf):
    tensors = _tensors(tiny_gguf)
    assert len(tensors) == 3 + 9 * 2  # embedding, final norm, untied output + 9 per layer
    # GGUF lists dimensions fastest-first: (in_features, out_features)
    assert list(tensors["token_embd.weight"].shape) == [64, 512]
    assert list(tensors["output.weight"].shape) == [64, 512]
    assert list(tensors["blk.1.attn_q.weight"].shape) == [64, 64]
    assert list(tensors["blk.1.attn_k.weight"].shape) == [64, 32]  # GQA: 2 kv heads x 16
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    attention = tiny_model.model.layers[1].self_attn
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"].data, attention.v_proj.weight.detach().numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data,
                                  rope_interleave(attention.k_proj.weight.detach().numpy(), 2))


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    path = write_gguf(_tied_model(), tmp_path / "tied.gguf")
    assert "output.weight" not in _tensors(path)  # llama.cpp then reuses token_embd.weight
    assert _fields(path)["llama.rope.freq_base"] == pytest.approx(50000.0)


def test_rope_interleave_pairs_each_rotated_half():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads x head_dim 4, one row id per row
    assert rope_interleave(rows, n_heads=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("preset", ["qwen2-tiny", "gemma2-tiny"])
def test_non_llama_models_are_refused_and_nothing_is_written(preset, tmp_path):
    with pytest.raises(UnsupportedModelError, match="Llama-family.*llama-tiny"):
        write_gguf(load(preset)[1], tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


def test_scaled_rope_is_refused(tmp_path):
    model = _tied_model()
    model.config.rope_parameters = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(UnsupportedModelError, match="rope_type"):
        write_gguf(model, tmp_path / "out.gguf")


def test_cli_gguf_writes_and_reports_one_line(tmp_path):
    from edgekit.cli import app

    out = tmp_path / "tiny.gguf"
    result = CliRunner().invoke(app, ["gguf", "llama-tiny", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out} (0.6 MB)") and result.stdout.count("\n") == 1
    assert _fields(out)["general.architecture"] == "llama"


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
    runner = LlamaCppRunner(str(write_gguf(model, tmp_path / "tied.gguf")), n_ctx=512)
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
