"""`export --format gguf`: every LLM family as a GGUF in llama.cpp's layout (read back with gguf.GGUFReader,
always), and llama.cpp computing the same function as PyTorch (only with llama-cpp-python)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from edgekit.errors import ModelLoadError, UnsupportedModelError
from edgekit.exporters.llm.gguf_tokenizer import tokenizer_writer
from edgekit.exporters.llm.gguf_writer import rope_interleave, write_gguf
from edgekit.exporters.llm.llama import Llama
from edgekit.exporters.registry import families
from edgekit.exporters.sources import load, packaged_path, presets
from edgekit.gguf_export import export_gguf

LLAMA = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
GEMMA = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_norm", "ffn_gate",
         "ffn_up", "ffn_down", "post_ffw_norm")
# preset -> (llama.cpp architecture, tensors of each block, keys beyond the shared ones)
EXPECTED = {
    "llama-tiny": ("llama", LLAMA, {}),
    "mistral-tiny": ("llama", LLAMA, {"llama.context_length": 48}),  # the window: see Mistral.gguf_keys
    "qwen2-tiny": ("qwen2", LLAMA + ("attn_q.bias", "attn_k.bias", "attn_v.bias"), {}),
    "qwen3-tiny": ("qwen3", LLAMA + ("attn_q_norm", "attn_k_norm"), {}),
    "gemma2-tiny": ("gemma2", GEMMA, {"gemma2.attention.sliding_window": 48, "gemma2.attention.sliding_window_pattern": 2,
                                      "gemma2.attn_logit_softcapping": 50.0, "gemma2.final_logit_softcapping": 30.0}),
    "gemma3-tiny": ("gemma3", GEMMA + ("attn_q_norm", "attn_k_norm"),
                    {"gemma3.attention.sliding_window": 48, "gemma3.attention.sliding_window_pattern": 3,
                     "gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 1e4}),
    "phi3-tiny": ("phi3", ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"), {}),
}
LLM_PRESETS = sorted(EXPECTED)
# measured on these presets (120-token prompts, every position, 3 seeds): f32 <= 8e-4, f16 <= 2.2e-3, q8_0 <= 3.8e-2
# of max |logit|; top-1 agreement f32 >= 99%, f16 >= 99%, q8_0 >= 93%
LOGIT_TOLERANCE = {"f32": 3e-3, "f16": 1e-2, "q8_0": 0.1}  # x max |PyTorch logit|
MIN_TOP1 = {"f32": 0.95, "f16": 0.95, "q8_0": 0.85}


def _fields(path) -> dict:
    return {name: field.contents() for name, field in GGUFReader(str(path)).fields.items()}


def _tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(str(path)).tensors}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """preset -> (torch model, {gguf type: path}), each written once."""
    folder, cache = tmp_path_factory.mktemp("gguf"), {}

    def get(preset: str, gguf_type: str = "f32"):
        model, paths = cache.setdefault(preset, (load(preset)[1], {}))
        if gguf_type not in paths:
            paths[gguf_type] = export_gguf(preset, str(folder / f"{preset}-{gguf_type}.gguf"), gguf_type).path
        return model, paths[gguf_type]
    return get


def test_every_llm_family_is_covered():
    assert set(families("text-generation")) == {presets()[p][0] for p in LLM_PRESETS}


# ------------------------------------------------------------------ the file (no llama.cpp needed)

@pytest.mark.parametrize("preset", LLM_PRESETS)
def test_tensors_are_those_of_the_llama_cpp_architecture(preset, written):
    model, path = written(preset)
    arch, block, _ = EXPECTED[preset]
    tensors, config = _tensors(path), model.config
    names = {n if "." in n else f"{n}.weight" for n in block}
    expected = {f"blk.{i}.{n}" for i in range(config.num_hidden_layers) for n in names}
    expected |= {"token_embd.weight", "output_norm.weight"} | (set() if config.tie_word_embeddings else
                                                                {"output.weight"})
    assert set(tensors) == expected
    known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH[arch.upper()]]}  # the gguf package's list for arch
    assert {n.replace("blk.0.", "blk.{bid}.").rsplit(".", 1)[0] for n in tensors if "blk." not in n or
            n.startswith("blk.0.")} <= known
    params = dict(model.named_parameters())
    assert list(tensors["token_embd.weight"].shape) == [config.hidden_size, config.vocab_size]  # fastest dim first
    assert sum(t.n_elements for t in tensors.values()) == sum(p.numel() for p in params.values())


@pytest.mark.parametrize("preset", LLM_PRESETS)
def test_keys_hold_the_shape_and_what_the_architecture_adds(preset, written):
    model, path = written(preset)
    arch, _, extra = EXPECTED[preset]
    config, fields = model.config, _fields(path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    expected = {"general.architecture": arch, "general.name": preset, "general.file_type": 0,
                f"{arch}.embedding_length": config.hidden_size, f"{arch}.block_count": config.num_hidden_layers,
                f"{arch}.feed_forward_length": config.intermediate_size,
                f"{arch}.attention.head_count": config.num_attention_heads,
                f"{arch}.attention.head_count_kv": config.num_key_value_heads,
                f"{arch}.attention.key_length": head_dim, f"{arch}.rope.dimension_count": head_dim,
                f"{arch}.context_length": config.max_position_embeddings, **extra}
    assert {k: pytest.approx(v) if isinstance(v, float) else v for k, v in expected.items()} == \
           {k: fields[k] for k in expected}
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(set(tokens)) == len(fields["tokenizer.ggml.token_type"]) == config.vocab_size


def test_llama_q_and_k_rows_are_in_llama_cpp_rope_order(written):
    model, path = written("llama-tiny")
    tensors, attention = _tensors(path), model.model.layers[1].self_attn
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"].data, attention.v_proj.weight.detach().numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data,
                                  rope_interleave(attention.k_proj.weight.detach().numpy(), 2))


def test_qwen2_keeps_hugging_face_rope_order_and_its_biases(written):
    model, path = written("qwen2-tiny")  # llama.cpp's qwen2 rotates halves, as Hugging Face does
    tensors, attention = _tensors(path), model.model.layers[0].self_attn
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data, attention.q_proj.weight.detach().numpy())
    np.testing.assert_array_equal(tensors["blk.0.attn_k.bias"].data, attention.k_proj.bias.detach().numpy())


@pytest.mark.parametrize("preset", ["gemma2-tiny", "gemma3-tiny"])
def test_gemma_norms_are_stored_as_one_plus_w(preset, written):
    model, path = written(preset)
    tensors, layer = _tensors(path), model.model.layers[0]
    np.testing.assert_allclose(tensors["blk.0.post_ffw_norm.weight"].data,
                               1 + layer.post_feedforward_layernorm.weight.detach().numpy())
    np.testing.assert_allclose(tensors["output_norm.weight"].data, 1 + model.model.norm.weight.detach().numpy())


def test_phi3_keeps_its_fused_projections(written):
    model, path = written("phi3-tiny")
    tensors = _tensors(path)
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 64 + 2 * 32]
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 2 * 128]  # gate and up, as llama.cpp splits them


@pytest.mark.parametrize("gguf_type, matrix, file_type", [("f16", GGMLQuantizationType.F16, 1),
                                                          ("q8_0", GGMLQuantizationType.Q8_0, 7)])
def test_matrices_take_the_chosen_type_and_vectors_stay_f32(gguf_type, matrix, file_type, written):
    _, path = written("qwen2-tiny", gguf_type)
    tensors = _tensors(path)
    assert _fields(path)["general.file_type"] == file_type
    assert {tensors[n].tensor_type for n in tensors if len(tensors[n].shape) == 2} == {matrix}
    assert {tensors[n].tensor_type for n in tensors if len(tensors[n].shape) == 1} == {GGMLQuantizationType.F32}


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, tie_word_embeddings=True, rope_theta=50000.0)).eval()
    path = write_gguf(Llama, model, tmp_path / "tied.gguf")
    assert "output.weight" not in _tensors(path)  # llama.cpp then reuses token_embd.weight
    assert _fields(path)["llama.rope.freq_base"] == pytest.approx(50000.0)


def test_rope_interleave_pairs_each_rotated_half():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads x head_dim 4, one row id per row
    assert rope_interleave(rows, n_heads=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def _variant(preset: str, **changes):
    family = load(preset)[0]
    torch.manual_seed(0)
    config = family.config_class(**{**family.presets[preset], **changes})
    return family, AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("preset, changes, says", [
    ("llama-tiny", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), "rope_type"),
    ("llama-tiny", dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    ("qwen2-tiny", dict(use_sliding_window=True, sliding_window=32, max_window_layers=0), "sliding-window"),
    ("gemma2-tiny", dict(final_logit_softcapping=None), "softcaps"),
    ("gemma2-tiny", dict(tie_word_embeddings=False), "own lm_head"),
    ("gemma3-tiny", dict(layer_types=["full_attention", "sliding_attention", "full_attention"]), "period"),
])
def test_what_llama_cpp_cannot_compute_is_refused_and_nothing_is_written(preset, changes, says, tmp_path):
    family, model = _variant(preset, **changes)
    with pytest.raises(UnsupportedModelError, match=says):
        write_gguf(family, model, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_reports_one_line(tmp_path):
    from edgekit.cli import app

    out = tmp_path / "tiny.gguf"
    result = CliRunner().invoke(app, ["export", "gemma3-tiny", "--format", "gguf", "--gguf-type", "q8_0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out} (0.2 MB): gemma3-tiny, llama.cpp architecture gemma3, q8_0, "
                                    "41 tensors, placeholder vocabulary") and result.stdout.count("\n") == 1
    assert _fields(out)["general.architecture"] == "gemma3"


# ------------------------------------------------------------------ tokenizers

SMOLLM2_VOCAB = 49152
TEXT = "The quick brown fox jumps over the lazy dog. def f(x): return x ** 2  # 12345 <|im_start|>user"


def _smollm2_gguf():
    try:
        return packaged_path("smollm2-135m")
    except ModelLoadError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def smollm2_shaped(tmp_path_factory):
    """A one-layer Llama with SmolLM2's vocabulary size: the tokenizer's file without 135M weights."""
    _smollm2_gguf()
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=SMOLLM2_VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=4)).eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    from edgekit.passkey import load_tokenizer

    _smollm2_gguf()
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def with_tokenizer(smollm2_shaped, hf_tokenizer, tmp_path_factory):
    """source kind -> (written GGUF, its description, its fields), the source a GGUF or a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tokenizers")
    hf_tokenizer.save_pretrained(folder / "folder")
    written = {}
    for kind, source in (("gguf", _smollm2_gguf()), ("folder", folder / "folder")):
        add_vocab, described = tokenizer_writer(source, SMOLLM2_VOCAB)
        path = write_gguf(Llama, smollm2_shaped, folder / f"{kind}.gguf", tokenizer=add_vocab)
        written[kind] = path, described, _fields(path)
    return written


def test_a_gguf_sources_tokenizer_is_copied_whole(with_tokenizer):
    source = _smollm2_gguf()
    _, described, fields = with_tokenizer["gguf"]
    reader = GGUFReader(str(source))
    names = [name for name in reader.fields if name.startswith("tokenizer.")]
    assert described == f"tokenizer of {source.name}"
    assert set(names) == {name for name in fields if name.startswith("tokenizer.")}
    for name in ("tokenizer.ggml.tokens", "tokenizer.ggml.pre", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id"):
        assert fields[name] == reader.fields[name].contents(), name
    assert fields["tokenizer.ggml.pre"] == "smollm" and fields["tokenizer.chat_template"]


def test_a_hugging_face_folders_tokenizer_is_written(with_tokenizer, hf_tokenizer):
    _, described, fields = with_tokenizer["folder"]
    assert described == "tokenizer of folder/"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # control: llama.cpp matches them whole
    assert len(fields["tokenizer.ggml.merges"]) > 40000 and fields["tokenizer.chat_template"]
    assert fields["tokenizer.ggml.eos_token_id"] == hf_tokenizer.eos_token_id


@pytest.mark.llamacpp
@pytest.mark.parametrize("source", ["gguf", "folder"])
def test_llama_cpp_tokenizes_text_as_the_source_does(source, with_tokenizer, hf_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(with_tokenizer[source][0]), vocab_only=True, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == \
           hf_tokenizer(TEXT, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ llama.cpp computes the same function

def _all_logits(path: str, ids: np.ndarray) -> np.ndarray:
    """llama.cpp's logits at every position of one prompt, (S, vocab)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(path, n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True, flash_attn=True,
                          verbose=False)
    llm.eval(ids.tolist())
    return np.array(llm.scores[:len(ids)])


@pytest.mark.llamacpp
@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("preset", LLM_PRESETS)
def test_llama_cpp_logits_match_pytorch(preset, gguf_type, written):
    pytest.importorskip("llama_cpp")
    model, path = written(preset, gguf_type)
    # llama.cpp's llama architecture has no window: Mistral's GGUF is the same function within it
    ids = np.random.default_rng(0).integers(0, 512, size=48 if preset == "mistral-tiny" else 120)
    got = _all_logits(path, ids)
    with torch.no_grad():
        want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert np.abs(got - want).max() <= LOGIT_TOLERANCE[gguf_type] * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= MIN_TOP1[gguf_type]


@pytest.mark.llamacpp
def test_gemma3_local_rope_base_and_query_scale_reach_llama_cpp(tmp_path):
    """A local base far from llama.cpp's default and a query scale that is not 1/sqrt(head_dim)."""
    pytest.importorskip("llama_cpp")
    family, model = _variant("gemma3-tiny", query_pre_attn_scalar=32, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    ids = np.random.default_rng(1).integers(0, 512, size=100)
    got = _all_logits(str(write_gguf(family, model, tmp_path / "g.gguf")), ids)
    with torch.no_grad():
        want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert np.abs(got - want).max() <= LOGIT_TOLERANCE["f32"] * np.abs(want).max()


def test_phi3_window_becomes_the_context_length(tmp_path):
    family, model = _variant("phi3-tiny", sliding_window=40)
    assert _fields(write_gguf(family, model, tmp_path / "p.gguf"))["phi3.context_length"] == 40


@pytest.mark.llamacpp
def test_phi3_partial_rotary_reaches_llama_cpp(tmp_path):
    pytest.importorskip("llama_cpp")
    family, model = _variant("phi3-tiny", rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                           "partial_rotary_factor": 0.5})
    path = write_gguf(family, model, tmp_path / "p.gguf")
    assert _fields(path)["phi3.rope.dimension_count"] == 8
    ids = np.random.default_rng(2).integers(0, 512, size=100)
    got = _all_logits(str(path), ids)
    with torch.no_grad():
        want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert np.abs(got - want).max() <= LOGIT_TOLERANCE["f32"] * np.abs(want).max()
