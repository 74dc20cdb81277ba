"""Generation through an exported model folder (prefill + decode graphs) vs transformers' own generate.

Every LLM family's `-tiny` preset (from the registry) is exported once with `--with-decode`; greedy
decoding in ONNX Runtime must produce exactly the tokens `model.generate(do_sample=False)` produces with
the same seeded weights. Bad input (CLI) is in tests/test_bad_input.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.errors import EdgekitError, ShapeError
from edgekit.exporters import families
from edgekit.generation import Generator, Sampling
from edgekit.model_folder import MANIFEST, export_folder, torch_greedy

NEW_TOKENS, PROMPT = 32, 40  # 40 + 32 tokens: past Gemma2/3's 48-token window during decoding
DHSA = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)
TINY = [pytest.param(f, n, id=n) for f in families("text-generation") for n in f.presets if n.endswith("-tiny")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(preset, method) -> exported folder; each export runs once for the module."""
    cache = {}

    def get(name: str, method: str = "dense"):
        if (name, method) not in cache:
            path = tmp_path_factory.mktemp("gen") / f"{name}-{method}"
            export_folder(name, str(path), method, check_tokens=16, **(DHSA if method == "dhsa" else {}))
            cache[name, method] = path
        return cache[name, method]

    return get


def prompt_ids(vocab: int, length: int = PROMPT, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family, name", TINY)
def test_greedy_matches_transformers_generate(folders, family, name):
    model = family.from_preset(name)
    ids = prompt_ids(model.config.vocab_size)
    want = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS)[0, PROMPT:].tolist()
    got = Generator(folders(name)).generate(ids, NEW_TOKENS)  # both stop at the model's eos, if it comes
    assert got.token_ids == want and got.finish_reason == ("length" if len(want) == NEW_TOKENS else "stop")


def test_dhsa_prefill_then_dense_decode_matches_pytorch(folders):
    """A 100-token prompt takes DHSA's sparse path (budget 64); decoding is dense over the whole cache."""
    family = next(f for f in families("text-generation") if "llama-tiny" in f.presets)
    model = family.from_preset("llama-tiny")
    ids = prompt_ids(model.config.vocab_size, 100)
    options = family.split_options("dhsa", DHSA)[0]
    want = torch_greedy(family, model, "dhsa", options, ids, NEW_TOKENS)
    got = Generator(folders("llama-tiny", "dhsa")).generate(ids, NEW_TOKENS, ignore_eos=True).token_ids
    assert got == want


def test_folder_holds_the_graphs_and_the_manifest(folders):
    folder = folders("llama-tiny", "dhsa")
    assert sorted(p.name for p in folder.iterdir()) == ["decode.onnx", MANIFEST, "prefill.onnx"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "a temp folder was left"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["method"] == "dhsa" and manifest["options"]["budget_tokens"] == 64
    assert manifest["tokenizer_source"] is None and manifest["files"]["tokenizer"] is None
    assert manifest["eos_token_ids"] == [2] and manifest["max_context"] == 32768
    assert manifest["check"]["tokens_match"] is True
    assert manifest["format"] == 2 and manifest["context"] == 8192 and manifest["precision"] == "float32"
    assert manifest["cache"]["update"] == "in-place" and manifest["cache"]["layout"][2] == "context"


def test_decode_graph_interface(folders):
    g = Generator(folders("llama-tiny"))
    assert [s.name for s in g.decode.inputs][:3] == ["input_ids", "attention_mask", "past.0.key"]
    assert g.decode.inputs[1].dims == ("batch", "total_sequence") and g.decode.inputs[1].low == 1
    assert g.decode.inputs[2].dims == g.decode.outputs[1].dims == ("batch", 2, "context", 16)
    assert g.decode.interface.recurrent["present.1.value"] == "past.1.value"


@pytest.mark.parametrize("name", ["llama-tiny", "gemma2-tiny"])
def test_the_cache_is_read_and_written_only_by_group_query_attention(folders, name):
    """No Concat copies the cache: each present output comes straight from a GroupQueryAttention node (so
    IO binding can hand it the past buffer), and no other node reads a past input."""
    import onnx

    graph = onnx.load(str(folders(name) / "decode.onnx")).graph
    producer = {out: n for n in graph.node for out in n.output}
    past = {i.name for i in graph.input if i.name.startswith("past.")}
    presents = [o.name for o in graph.output if o.name.startswith("present.")]
    assert presents and {(producer[p].domain, producer[p].op_type) for p in presents} == \
        {("com.microsoft", "GroupQueryAttention")}
    assert {n.op_type for n in graph.node if past & set(n.input)} == {"GroupQueryAttention"}
    assert len(past) == len(presents) == 2 * sum(n.op_type == "GroupQueryAttention" for n in graph.node)


def test_the_cache_is_updated_in_place_and_kept_for_the_session(folders):
    """Every step runs on the same buffers (the present outputs are the past inputs' memory), which hold
    PyTorch's cache after the prompt and every fed-back token; a second generation reuses them."""
    family = next(f for f in families("text-generation") if "llama-tiny" in f.presets)
    model = family.from_preset("llama-tiny")
    g = Generator(folders("llama-tiny"), context=64)
    pointers = {name: v.data_ptr() for name, v in g.cache.values.items()}
    ids = prompt_ids(512, 20)
    steps = g.token_stream(ids, 6, ignore_eos=True)
    for n, _ in enumerate(steps):
        assert g.cache.length == len(ids) + n  # the prompt, then one row per decode step
        assert {name: v.data_ptr() for name, v in g.cache.values.items()} == pointers
    bound = g.cache.binding.get_outputs()[:len(pointers)]  # presents, bound in the past inputs' order
    assert [v.data_ptr() for v in bound] == list(pointers.values())
    tokens = g.generate(ids, 6, ignore_eos=True).token_ids
    with torch.no_grad():
        _, *want = family.prepare(model, "dense", {})(torch.tensor([ids + tokens[:5]]))  # (1, 2, 25, 16) each
    for array, expected in zip(g.cache.arrays.values(), want):
        np.testing.assert_allclose(array[:, :, :25], expected.numpy(), atol=1e-4)
        assert not array[:, :, 25:].any()  # rows past the cache's length never written
    assert {name: v.data_ptr() for name, v in g.cache.values.items()} == pointers


def test_generating_past_the_context_is_a_one_line_error(folders):
    g = Generator(folders("llama-tiny"), context=12)
    ids = prompt_ids(512, 8)
    with pytest.raises(ShapeError, match="8 tokens [+] 5 new ones exceeds the context of 12 tokens: generate at most"
                                         " 4"):
        g.generate(ids, 5, ignore_eos=True)
    full = g.generate(ids, 4, ignore_eos=True)
    assert len(full.token_ids) == 4 and full.finish_reason == "length" and g.cache.length == 11
    g.cache.step(full.token_ids[-1])  # the twelfth row: the cache is now full
    with pytest.raises(ShapeError, match="the cache is full: its context is 12 tokens"):
        g.cache.step(full.token_ids[-1])
    with pytest.raises(ShapeError, match="the prompt has 12 tokens; the context is 12"):
        g.generate(prompt_ids(512, 12), 1)
    with pytest.raises(EdgekitError, match="exceeds this folder's limit of 32768 tokens"):
        Generator(folders("llama-tiny"), context=40000)


def test_a_context_beyond_the_positions_is_opt_in(tmp_path):
    """--beyond-positions: the folder records the longer context as its limit and allocates a cache that long
    (long-prompt benchmarks run SmolLM2, trained to 8192, at 16K); without --context it is an error."""
    with pytest.raises(EdgekitError, match="exceeds the model's 32768 positions .*--beyond-positions"):
        export_folder("llama-tiny", str(tmp_path / "refused"), "dense", check_tokens=16, context=32800)
    assert not (tmp_path / "refused").exists()
    path = tmp_path / "long"
    manifest = export_folder("llama-tiny", str(path), "dense", check_tokens=16, context=32800,
                             beyond_positions=True)["manifest"]
    assert (manifest.context, manifest.max_context) == (32800, 32800)
    g = Generator(path)
    assert g.context == 32800
    out = g.generate(prompt_ids(512, 8), 3, ignore_eos=True)
    assert len(out.token_ids) == 3 and g.cache.length == 10
    with pytest.raises(EdgekitError, match="exceeds this folder's limit of 32800 tokens"):
        Generator(path, context=32801)
    with pytest.raises(EdgekitError, match="--beyond-positions allows a --context .*give --context N"):
        export_folder("llama-tiny", str(tmp_path / "no-context"), "dense", beyond_positions=True)


def test_two_streams_on_one_generator_do_not_share_a_cache_silently(folders):
    g = Generator(folders("llama-tiny"), context=64)
    first = g.token_stream(prompt_ids(512, 10), 8, ignore_eos=True)
    next(first)
    assert len(g.generate(prompt_ids(512, 20), 3, ignore_eos=True).token_ids) == 3  # takes the cache over
    with pytest.raises(EdgekitError, match="another generation has since taken this Generator's cache"):
        next(first)


def test_int8_folder_decodes_in_place(folders, tmp_path):
    """`edgekit quantize FOLDER`: both graphs int8 (MatMuls only), GroupQueryAttention left as it is."""
    import onnx

    from edgekit.folder_quantizing import quantize_folder
    from edgekit.quantizing import op_counts

    result = quantize_folder(folders("llama-tiny"), tmp_path / "int8", "int8")
    for role in ("prefill", "decode"):
        counts = op_counts(onnx.load(str(tmp_path / "int8" / f"{role}.onnx")))
        assert counts.get("MatMulInteger") == 15 and "MatMul" not in counts, counts
    assert op_counts(onnx.load(str(tmp_path / "int8" / "decode.onnx")))["com.microsoft.GroupQueryAttention"] == 2
    manifest = json.loads((tmp_path / "int8" / MANIFEST).read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["graphs"]["decode"]["agreement"]
    # random weights give flat logits, so int8 (embedding table included) keeps 3 of 8 greedy tokens here;
    # a broken quantization keeps ~0 (chance is 1/512 per token)
    assert manifest["check"]["greedy_match_float"] == f"{result.greedy_match}/8" and result.greedy_match >= 2
    g = Generator(tmp_path / "int8")
    pointers = [v.data_ptr() for v in g.cache.values.values()]
    out = g.generate(prompt_ids(512), 8, ignore_eos=True)
    assert len(out.token_ids) == 8 and [v.data_ptr() for v in g.cache.values.values()] == pointers
    assert [v.data_ptr() for v in g.cache.binding.get_outputs()[:len(pointers)]] == pointers


def test_sampling_is_seeded_and_stop_tokens_stop(folders):
    g = Generator(folders("llama-tiny"))
    ids = prompt_ids(512)
    runs = [g.generate(ids, 12, temperature=0.9, top_k=50, top_p=0.9, seed=s).token_ids for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    greedy = g.generate(ids, 12, ignore_eos=True).token_ids
    stopped = g.generate(ids, 12, stop_token_ids=[greedy[3]], ignore_eos=True)
    assert stopped.token_ids == greedy[:greedy.index(greedy[3]) + 1] and stopped.finish_reason == "stop"
    assert list(g.stream(ids, 5, ignore_eos=True)) == greedy[:5]  # no tokenizer: the stream yields ids


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = np.random.default_rng(0).standard_normal(100)
    rng = np.random.default_rng(0)
    assert Sampling(1.0, top_k=1).pick(logits, rng) == logits.argmax()
    assert Sampling(1.0, top_p=1e-9).pick(logits, rng) == logits.argmax()
    with pytest.raises(EdgekitError, match="top-p"):
        Sampling(top_p=2)


def test_bad_prompts_are_one_line_errors(folders):
    g = Generator(folders("llama-tiny"))
    with pytest.raises(EdgekitError, match="has no tokenizer"):
        g.generate("hello", 4)
    with pytest.raises(EdgekitError, match="empty"):
        g.generate([], 4)
    with pytest.raises(ShapeError, match="outside the vocabulary"):
        g.generate([512], 4)


@pytest.mark.slow
def test_smollm2_streams_the_text_it_generates(tmp_path):
    """The real SmolLM2-135M (GGUF): its tokenizer and chat template travel in the folder."""
    folder = tmp_path / "smollm2"
    export_folder("smollm2-135m", str(folder), check_tokens=16)
    g = Generator(folder)
    assert g.manifest.chat_template and g.manifest.tokenizer_source.endswith(".gguf")
    whole = g.generate("What is the capital of France?", 16, chat=True)
    pieces = list(g.stream("What is the capital of France?", 16, chat=True))
    assert "".join(pieces) == whole.text and len(pieces) > 1 and "Paris" in whole.text
    cut = g.generate("What is the capital of France?", 16, chat=True, stop=["Paris"])
    assert "Paris" not in cut.text and cut.finish_reason == "stop" and whole.text.startswith(cut.text)


def test_profile_decode_tokens_adds_llama_bench_figures(folders):
    from edgekit import report
    from edgekit.profiling import profile

    folder = str(folders("llama-tiny"))
    results = profile([folder], [32], decode_tokens=8, repeat=2, warmup=0)
    row = results["results"][0]
    assert row["status"] == "ok", row
    assert row["decode_tokens"] == 8 and row["tg_tokens_per_s"] > 0 and row["pp_tokens_per_s"] > 0
    assert 0 < row["ttft_ms"] < row["latency_ms"]["median"]
    assert "tg tokens/s" in report.markdown(results).splitlines()[0]


def test_cli_generate_streams_ids_and_reports_speed(folders):
    from test_cli import assert_ok, edgekit

    g = Generator(folders("llama-tiny"))
    want = g.generate([5, 6, 7], 6, ignore_eos=True).token_ids
    proc = edgekit("generate", folders("llama-tiny"), "--prompt-ids", "5,6,7", "--max-new-tokens", 6, "--ignore-eos")
    assert_ok(proc)
    assert [int(t) for t in proc.stdout.split()] == want
    assert "time to first token" in proc.stderr and "tokens/s" in proc.stderr


def test_ctrl_c_while_streaming_stops_cleanly(folders):
    import signal
    import subprocess

    from test_cli import EDGEKIT

    proc = subprocess.Popen([*EDGEKIT, "generate", str(folders("llama-tiny")), "--prompt-ids", "1,2,3",
                             "--max-new-tokens", "8000", "--ignore-eos"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.read(8)  # tokens are streaming
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["Aborted."]


def test_export_replaces_an_old_model_folder_whole(tmp_path):
    folder = tmp_path / "m"
    export_folder("llama-tiny", str(folder), check_tokens=16)
    (folder / "stale.txt").write_text("from the old export")
    export_folder("llama-tiny", str(folder), "dhsa", check_tokens=16, **DHSA)
    assert json.loads((folder / MANIFEST).read_text())["method"] == "dhsa"
    assert not (folder / "stale.txt").exists() and [p.name for p in tmp_path.iterdir()] == ["m"]
