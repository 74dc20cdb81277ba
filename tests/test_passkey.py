"""Passkey retrieval: prompt construction, teacher-forced scoring, and real SmolLM2 dense vs DHSA.

The real-model test exports SmolLM2-135M twice (one GGUF load) and runs the `edgekit passkey` command
at ~1.5K tokens, where DHSA with a 1024-token budget takes its sparse path (the last query blocks keep
1024 of ~1530 keys). Smaller budgets (512, 768) lose keys there with the mean or the bound chunk score
alone (measured in PyTorch over 10 depths: 5-8 of 10), so they would test the budget, not the export.
A few minutes on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.errors import EdgekitError, ModelLoadError
from edgekit.passkey import LOGITS_TO_KEEP, NEEDLE, build_prompt, make_cases, passkey, score

DEPTHS = (0.1, 0.5, 0.9)



# ---------------------------------------------------------------------------------------------------
# scoring (synthetic logits)


def peaked_logits(targets: list[int], rows: int = LOGITS_TO_KEEP, vocab: int = 50) -> np.ndarray:
    """(rows, vocab) logits whose last len(targets) rows peak at `targets`."""
    logits = np.zeros((rows, vocab), dtype=np.float32)
    for row, token in zip(range(rows - len(targets), rows), targets):
        logits[row, token] = 5.0
    return logits


def test_score_finds_an_answer_predicted_at_every_position():
    found, predicted = score(peaked_logits([3, 4, 5, 6, 7, 8]), [3, 4, 5, 6, 7, 8])
    assert found and predicted == [3, 4, 5, 6, 7, 8]


def test_score_rejects_one_wrong_digit():
    found, predicted = score(peaked_logits([3, 4, 5, 9, 7, 8]), [3, 4, 5, 6, 7, 8])
    assert not found and predicted == [3, 4, 5, 9, 7, 8]


def test_score_reads_the_last_rows_only():
    logits = peaked_logits([3, 4, 5, 6, 7, 8])
    logits[0, 1] = 9.0  # an earlier prompt position: irrelevant
    assert score(logits, [3, 4, 5, 6, 7, 8])[0]


def test_score_needs_a_row_per_answer_token():
    with pytest.raises(EdgekitError, match="logits_to_keep"):
        score(np.zeros((4, 50), dtype=np.float32), [1, 2, 3, 4, 5, 6])


# ---------------------------------------------------------------------------------------------------
# prompt construction (real tokenizer)


@pytest.mark.parametrize("length", [1024, 1500])
@pytest.mark.parametrize("depth", DEPTHS)
def test_prompt_length_and_needle_depth(tokenizer, length, depth):
    prompt = build_prompt(tokenizer, length, depth, "12345")
    tokens = prompt.model_input.shape[1]
    assert length - 10 <= tokens <= length
    needle = tokenizer.decode(prompt.ids[prompt.needle_start:prompt.needle_start + 30])
    assert needle.strip().startswith(NEEDLE.format(key="12345")[:30])
    assert abs(prompt.needle_start / tokens - depth) < 0.06


def test_prompt_ends_with_the_question_and_answer_is_the_key(tokenizer):
    prompt = build_prompt(tokenizer, 1024, 0.5, "90210")
    assert tokenizer.decode(prompt.ids).endswith("The pass key is ")
    assert tokenizer.decode(prompt.answer_ids) == "90210"
    assert len(prompt.answer_ids) <= LOGITS_TO_KEEP
    assert list(prompt.model_input[0, -len(prompt.answer_ids) + 1:]) == list(prompt.answer_ids[:-1])


def test_prompt_too_short_for_the_fixed_text(tokenizer):
    with pytest.raises(EdgekitError, match="too short"):
        build_prompt(tokenizer, 40, 0.5, "12345")


def test_cases_are_seeded_and_shared(tokenizer):
    keys = [c["key"] for c in make_cases(tokenizer, [256, 512], DEPTHS, trials=2, seed=7)]
    assert keys == [c["key"] for c in make_cases(tokenizer, [256, 512], DEPTHS, trials=2, seed=7)]
    assert len(keys) == 12 and all(len(k) == 5 and k.isdigit() for k in keys)
    assert keys != [c["key"] for c in make_cases(tokenizer, [256, 512], DEPTHS, trials=2, seed=8)]


# ---------------------------------------------------------------------------------------------------
# model checks before any long run


def logits_only_model(path, dims: list) -> str:
    """An ONNX file whose only output is `logits` of the given shape (never run, only inspected)."""
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, dims)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Cast", ["input_ids"], ["logits"], to=1)], "g", [ids], [out])
    onnx.save(onnx.helper.make_model(graph), path)
    return str(path)


def test_last_token_logits_model_is_refused(tmp_path, tokenizer):
    model = logits_only_model(tmp_path / "last.onnx", [1, len(tokenizer)])
    with pytest.raises(EdgekitError, match="--logits-to-keep 8"):
        passkey([model], [256], [0.5])


def test_other_vocabulary_is_refused(tmp_path, tokenizer):
    model = logits_only_model(tmp_path / "other.onnx", [1, "n", 512])
    with pytest.raises(EdgekitError, match="vocabulary of 512"):
        passkey([model], [256], [0.5])


def test_bad_requests_fail_fast(tmp_path):
    with pytest.raises(EdgekitError, match="not found"):
        passkey([str(tmp_path / "missing.onnx")], [256], [0.5])
    model = logits_only_model(tmp_path / "m.onnx", [1, "n", 512])
    with pytest.raises(EdgekitError, match="depths"):
        passkey([model], [256], [1.5])


# ---------------------------------------------------------------------------------------------------
# real SmolLM2-135M: dense vs DHSA through the CLI


@pytest.fixture(scope="module")
def smollm2_models(tmp_path_factory):
    """Dense and DHSA (budget 1024 < prompt: sparse path) exports of SmolLM2, from one GGUF load."""
    from edgekit.exporting import export
    from edgekit.exporters import sources

    try:
        loaded = sources.load("smollm2-135m")
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("passkey")
    paths = {}
    for method, options in (("dense", {}), ("dhsa", {"budget_tokens": 1024})):
        paths[method] = folder / f"smollm2-{method}.onnx"
        export("smollm2-135m", str(paths[method]), method=method, logits_to_keep=LOGITS_TO_KEEP,
               loaded=loaded, **options)
    return paths


def test_smollm2_dense_and_dhsa_find_the_key(smollm2_models, tmp_path):
    """In-process CLI run: the tokenizer loaded by the unit tests above is reused (~5-20 s saved)."""
    report = tmp_path / "passkey.json"
    result = CliRunner().invoke(app, ["passkey", str(smollm2_models["dense"]), str(smollm2_models["dhsa"]),
                                      "--lengths", "1536", "--depths", "0.1,0.5,0.9", "--json", str(report)])
    assert result.exit_code == 0, result.stderr or repr(result.exception)
    assert "| tokens |" in result.stdout and "smollm2-dhsa.onnx (dhsa)" in result.stdout
    assert "| tokens |" not in result.stderr
    data = json.loads(report.read_text())
    found = {s["method"]: s["found"] for s in data["summary"]}
    assert all(s["total"] == 3 for s in data["summary"])
    assert found["dense"] >= 2, data["results"]
    assert found["dhsa"] >= found["dense"], data["results"]
    assert all(r["found"] == (r["answer"] == r["key"]) for r in data["results"])
