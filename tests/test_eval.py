"""`edgekit eval`: retrieval task generation, scoring, perplexity in ONNX Runtime, and DHSA budget overrides.

Tiny random-weight models keep this fast: llama-tiny (vocab 512) for perplexity against PyTorch and for
budgets, and a one-layer model with SmolLM2's vocabulary for the retrieval pipeline (the SmolLM2 tokenizer
builds its prompts). Real-weight accuracy figures come from the commands in BENCHMARKS.md, not from here.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgekit import haystack
from edgekit.cli import app
from edgekit.errors import EdgekitError, InvalidAttributeError
from edgekit.eval_models import load_models, with_budget
from edgekit.exporting import export
from edgekit.exporters.registry import presets
from edgekit.perplexity import nll, perplexity, windows
from edgekit.retrieval import retrieval, summarize
from edgekit.retrieval_tasks import TASKS, get_tasks, make_cases
from edgekit.session import Session

SMALL_DHSA = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)  # >= 40 valid



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """llama-tiny dense and DHSA (small blocks: 160 tokens take the sparse path), every position's logits."""
    folder = tmp_path_factory.mktemp("eval")
    paths = {"dense": folder / "dense.onnx", "dhsa": folder / "dhsa.onnx"}
    export("llama-tiny", str(paths["dense"]), logits_to_keep=0, check_tokens=16)
    export("llama-tiny", str(paths["dhsa"]), method="dhsa", logits_to_keep=0, check_tokens=16, **SMALL_DHSA)
    return paths


# ---------------------------------------------------------------------------------------------------
# task generation (real tokenizer)


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("length", [700, 2000])
def test_samples_hit_the_length_and_hold_each_needle_once(tokenizer, name, length):
    for case in make_cases(tokenizer, [TASKS[name]], [length], samples=3, seed=1):
        sample = case["sample"]
        prompt = sample.prompt
        assert length - 12 <= prompt.model_input.shape[1] <= length
        text = tokenizer.decode(prompt.ids)
        for needle, start in zip(sample.needles, prompt.needle_starts):
            assert text.count(needle) == 1, needle
            assert tokenizer.decode(prompt.ids[start:start + 40]).strip().startswith(needle[:20])
        assert text.endswith(" ") or name == "vartrack"  # a space before digits joins the prompt; a name's first token holds its own
        assert tokenizer.decode(prompt.answer_ids).strip() == ", ".join(sample.values)
        for (a, b), value in zip(prompt.parts, sample.values):
            assert tokenizer.decode(prompt.answer_ids[a:b]).strip() == value


def test_multikey_asks_one_key_whose_value_appears_once(tokenizer):
    for case in make_cases(tokenizer, [TASKS["multikey"]], [800], samples=4, seed=3):
        sample = case["sample"]
        text = tokenizer.decode(sample.prompt.ids)
        assert len(sample.needles) == 4 and text.count(sample.values[0]) == 1
        key = sample.question.split("for the ")[1].rstrip("?")
        assert [n for n in sample.needles if f"for the {key} is" in n] == [
            f"The special magic number for the {key} is {sample.values[0]}."]


def test_multivalue_answers_in_the_order_the_values_appear(tokenizer):
    sample = make_cases(tokenizer, [TASKS["multivalue"]], [900], samples=1, seed=5)[0]["sample"]
    starts = sample.prompt.needle_starts
    assert list(starts) == sorted(starts) and len(set(sample.values)) == 4
    assert all(v in n for v, n in zip(sample.values, sample.needles))


def test_vartrack_answer_is_the_chain_not_the_decoy(tokenizer):
    sample = make_cases(tokenizer, [TASKS["vartrack"]], [900], samples=1, seed=2)[0]["sample"]
    chain, decoy = sample.needles[:4], sample.needles[4:]
    value = sample.question.split("value ")[1].rstrip("?")
    assert chain[0] == f"VAR {sample.values[0]} = {value}."
    assert all(chain[i] == f"VAR {sample.values[i]} = {sample.values[i - 1]}." for i in range(1, 4))
    assert value not in decoy[0] and not set(sample.values) & {n.split()[1] for n in decoy}


def test_cases_are_seeded(tokenizer):
    tasks = list(TASKS.values())
    ids = lambda seed: [c["sample"].prompt.ids for c in make_cases(tokenizer, tasks, [400], 2, seed)]  # noqa: E731
    assert ids(0) == ids(0) and ids(0) != ids(1)
    # a task's prompts do not depend on which other tasks run
    alone = make_cases(tokenizer, [TASKS["vartrack"]], [400], 2, 0)
    assert [c["sample"].prompt.ids for c in alone] == ids(0)[-2:]


def test_unknown_task_lists_the_known():
    with pytest.raises(EdgekitError, match="unknown task 'needle'; known: passkey, multikey, multivalue, vartrack"):
        get_tasks(["passkey", "needle"])


def test_too_short_a_length_says_so(tokenizer):
    with pytest.raises(EdgekitError, match="multivalue length 60 is too short"):
        make_cases(tokenizer, [TASKS["multivalue"]], [60], 1, 0)


# ---------------------------------------------------------------------------------------------------
# scoring (synthetic logits)


def prompt_of(answer: list[int], parts) -> haystack.Prompt:
    return haystack.Prompt((1, 2, 3), tuple(answer), tuple(parts), (0,))


def logits_for(predicted: list[int], rows: int = 12, vocab: int = 40) -> np.ndarray:
    logits = np.random.default_rng(0).normal(size=(rows, vocab)).astype(np.float32)
    for row, token in zip(range(rows - len(predicted), rows), predicted):
        logits[row, token] = 50.0
    return logits


def test_score_all_values_right():
    s = haystack.score(logits_for([5, 6, 7, 8, 9]), prompt_of([5, 6, 7, 8, 9], [(0, 2), (3, 5)]))
    assert s.correct and s.parts_correct == (True, True) and s.partial == 1.0


def test_score_partial_credit_for_one_wrong_value():
    s = haystack.score(logits_for([5, 6, 7, 8, 1]), prompt_of([5, 6, 7, 8, 9], [(0, 2), (3, 5)]))
    assert not s.correct and s.parts_correct == (True, False) and s.partial == 0.5
    assert s.predicted == [5, 6, 7, 8, 1]


def test_score_wrong_separator_is_not_fully_correct():
    s = haystack.score(logits_for([5, 6, 0, 8, 9]), prompt_of([5, 6, 7, 8, 9], [(0, 2), (3, 5)]))
    assert not s.correct and s.parts_correct == (True, True)


def test_score_needs_a_row_per_answer_token():
    with pytest.raises(EdgekitError, match="needs logits of its 5 positions"):
        haystack.score(logits_for([], rows=3), prompt_of([5, 6, 7, 8, 9], [(0, 5)]))


def test_summary_ratio_to_dense():
    rows = [dict(model=m, method=m, budget=None, task="multikey", seq_len=64, status="ok", correct=c,
                 parts_correct=int(c), parts=1) for m, c in [("dense", True), ("dense", True), ("dhsa", True),
                                                             ("dhsa", False)]]
    summary = {s["method"]: s for s in summarize(rows)}
    assert summary["dense"]["accuracy"] == 1.0 and summary["dhsa"]["accuracy"] == 0.5
    assert summary["dhsa"]["ratio_to_dense"] == 0.5 and summary["dhsa"]["partial_ratio_to_dense"] == 0.5


def test_summary_without_a_dense_hit_has_no_ratio():
    rows = [dict(model=m, method=m, budget=None, task="multivalue", seq_len=64, status="ok", correct=False,
                 parts_correct=p, parts=4) for m, p in [("dense", 2), ("dhsa", 1)]]
    summary = {s["method"]: s for s in summarize(rows)}
    assert summary["dhsa"]["ratio_to_dense"] is None and summary["dhsa"]["partial_ratio_to_dense"] == 0.5


# ---------------------------------------------------------------------------------------------------
# perplexity in ONNX Runtime vs PyTorch


def test_nll_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits, ids = rng.normal(size=(2500, 97)).astype(np.float32) * 4, rng.integers(0, 97, 2500)
    total, n = nll(logits, ids)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:-1]).double(), torch.from_numpy(ids[1:]),
                                             reduction="sum")
    assert n == 2499 and total == pytest.approx(float(want), rel=1e-10)


def test_windows_are_disjoint_from_the_start():
    ids = np.arange(1000)
    assert [w[0] for w in windows(ids, 300, None)] == [0, 300, 600]
    assert len(windows(ids, 300, 2)) == 2
    with pytest.raises(EdgekitError, match="holds 1000 tokens: too short for one window of 1024"):
        windows(ids, 1024, None)


def test_ppl_in_onnx_runtime_equals_pytorch_cross_entropy(tiny, tmp_path):
    ids = np.random.default_rng(0).integers(0, 512, 700)
    np.save(tmp_path / "ids.npy", ids)
    report = perplexity([str(tiny["dense"])], [128, 300], token_ids=str(tmp_path / "ids.npy"))
    family, _ = presets()["llama-tiny"]
    model = family.from_preset("llama-tiny")
    for row in report["results"]:
        n = row["seq_len"]
        chunks = torch.from_numpy(ids[: len(ids) // n * n].reshape(-1, n))
        with torch.no_grad():
            logits = model(input_ids=chunks).logits  # (W, n, vocab)
        want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 512), chunks[:, 1:].reshape(-1))
        assert row["status"] == "ok" and row["tokens"] == chunks.shape[0] * (n - 1)
        assert row["nll"] == pytest.approx(float(want), rel=1e-5)
        assert row["ppl"] == pytest.approx(float(torch.exp(want)), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# DHSA budgets without re-exporting


def budgets_of(proto: onnx.ModelProto) -> set[int]:
    from edgekit.runtime_ops.attach import all_nodes

    return {a.i for n in all_nodes(proto) if n.op_type == "DHSAAttention" for a in n.attribute
            if a.name == "budget_tokens"}


def test_budget_override_changes_every_dhsa_node(tiny):
    proto = onnx.load(str(tiny["dhsa"]))
    assert budgets_of(proto) == {64}
    assert budgets_of(with_budget(proto, 48)) == {48}


def test_budget_at_least_the_prompt_equals_dense_exactly(tiny):
    ids = np.random.default_rng(1).integers(0, 512, (1, 160))
    dense = Session(tiny["dense"]).run({"input_ids": ids})["logits"]
    by_budget = {m.budget: m.session("cpu", None).run({"input_ids": ids})["logits"]
                 for m in load_models([str(tiny["dhsa"])], [48, 160, 1000])}
    assert np.array_equal(by_budget[160], dense) and np.array_equal(by_budget[1000], dense)
    assert not np.allclose(by_budget[48], dense, atol=1e-4)  # 48 of 160 keys: the sparse path ran


def test_budget_outside_the_ops_bounds(tiny):
    with pytest.raises(InvalidAttributeError, match=r"budget_tokens \(39\) must cover .* \(40\)"):
        load_models([str(tiny["dhsa"])], [39])
    with pytest.raises(InvalidAttributeError, match="must be >= 1"):
        load_models([str(tiny["dhsa"])], [0])


def test_budget_for_a_dense_model_alone(tiny):
    with pytest.raises(EdgekitError, match="--budgets applies to DHSA models"):
        load_models([str(tiny["dense"])], [512])
    assert [m.budget for m in load_models([str(tiny["dense"]), str(tiny["dhsa"])], [48, 64])] == [None, 48, 64]


# ---------------------------------------------------------------------------------------------------
# the whole pipeline through the CLI (random weights, SmolLM2's vocabulary)


def export_vocab_model(path, tokenizer, logits_to_keep: int, method: str = "dhsa") -> str:
    """A one-layer model with SmolLM2's vocabulary (random weights): prompts from the real tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from edgekit.exporters.llm.llama import Llama

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config).eval()
    export("v", str(path), method=method, logits_to_keep=logits_to_keep, check_tokens=64,
           loaded=(Llama, model, "v"), **(SMALL_DHSA if method == "dhsa" else {}))
    return str(path)


@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory, tokenizer):
    return export_vocab_model(tmp_path_factory.mktemp("vocab") / "v-dhsa.onnx", tokenizer, 0)


def test_retrieval_cli_writes_results_table_and_plot(vocab_model, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(app, ["eval", "retrieval", str(vocab_model), "--tokenizer", "smollm2-135m",
                                      "--lengths", "300", "--samples", "2", "--budgets", "48,64", "--json", str(out),
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.stderr or repr(result.exception)
    assert "| multivalue | 300 |" in result.stdout and "budget 48" in result.stdout
    data = json.loads(out.read_text())
    assert len(data["results"]) == 2 * 4 * 2 and {s["budget"] for s in data["summary"]} == {48, 64}
    assert all(r["status"] == "ok" for r in data["results"])
    assert all(r["parts_correct"] == r["parts"] for r in data["results"] if r["correct"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_retrieval_refuses_too_few_logit_rows(tmp_path, tokenizer):
    path = export_vocab_model(tmp_path / "keep8.onnx", tokenizer, 8)
    passkey = retrieval([path], ["passkey"], [300], samples=1, tokenizer="smollm2-135m")  # 5 answer tokens fit
    assert passkey["results"][0]["status"] == "ok"
    with pytest.raises(EdgekitError, match="last 8 token.*longest answer needs 2[0-9].*--logits-to-keep 64"):
        retrieval([path], ["passkey", "multivalue"], [300], samples=1, tokenizer="smollm2-135m")



def test_ppl_of_a_text_too_short_for_one_window(vocab_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(EdgekitError, match=r"the text holds \d+ tokens: too short for one window of 64"):
        perplexity([vocab_model], [64], text=str(short), tokenizer="smollm2-135m")
    report = perplexity([vocab_model], [1024], tokenizer="smollm2-135m", windows_per_length=2)  # the default text
    assert report["settings"]["text"]["text"] == "pydoc_data.topics" and report["results"][0]["windows"] == 2


def test_report_takes_retrieval_results_for_the_accuracy_chart(tmp_path):
    from edgekit.eval_results import load_accuracy

    summary = [{"model": "m.onnx", "method": "dhsa", "budget": None, "exported_budget": 2048, "task": "vartrack",
                "seq_len": 64, "found": 1, "total": 2, "failed": 0, "accuracy": 0.5, "partial": 0.75,
                "ratio_to_dense": None}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "retrieval", "results": [], "summary": summary, "settings": {}}))
    assert load_accuracy(str(path))["summary"][0]["task"] == "vartrack"
    path.write_text(json.dumps({"kind": "retrieval", "summary": [{"model": "m", "method": "d", "seq_len": 1}]}))
    with pytest.raises(EdgekitError, match="summary row 1: found"):
        load_accuracy(str(path))


def test_accuracy_chart_plots_retrieval_tasks_at_the_exported_budget():
    from edgekit.html_report import accuracy_points, figures

    profile = {"results": [{"model": m, "method": m, "seq_len": 64, "status": "ok", "peak_rss_mb": 1.0,
                            "latency_ms": {"median": ms, "p90": ms}} for m, ms in (("dense", 9.0), ("dhsa", 5.0))]}
    row = dict(model="m", seq_len=64, found=1, total=2, task="multikey")
    retrieval_file = {"kind": "retrieval", "summary": [
        {**row, "method": "dense", "budget": None}, {**row, "method": "dhsa", "budget": 512, "exported_budget": 64},
        {**row, "method": "dhsa", "budget": 64, "exported_budget": 64}]}
    files = [{"name": "p", "path": "p.json", "device": "cpu", "data": profile}]
    titles = [f["title"] for f in figures(files, [retrieval_file])]
    assert "Accuracy vs speed (retrieval hits vs prefill latency)" in titles
    assert accuracy_points(files, [retrieval_file]) == {"dense · multikey": [(9.0, 0.5, 64)],
                                                         "dhsa · multikey": [(5.0, 0.5, 64)]}
    assert not [f for f in figures(files, [{"summary": [{**row, "method": "other"}]}]) if "Accuracy" in f["title"]]
