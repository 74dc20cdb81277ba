"""`passkey`: needle-in-a-haystack retrieval, scored in one prefill per prompt.

A random 5-digit key sits at a chosen depth of repetitive filler text; the prompt ends with
"The pass key is". Instead of generating, we feed the answer too (teacher forcing) and read the last
few rows of logits: the key counts as found iff the argmax at every answer position is the answer's
token, which is exactly what greedy decoding would have produced. So one prefill per prompt suffices,
and models exported with `export(..., logits_to_keep=LOGITS_TO_KEEP)` can be scored by ONNX Runtime.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekit import haystack
from edgekit.errors import EdgekitError, first_line
from edgekit.haystack import Prompt
from edgekit.retrieval_tasks import TASKS

Progress = Callable[[str, int], None]  # (what runs now, how many are done)

# Rows of logits a model must emit: " 12345" is 6 SmolLM2 tokens (a space, then one per digit); the
# space joins the prompt, so 5 rows are scored. 8 leaves room for tokenizers that split differently.
LOGITS_TO_KEEP = 8
DEFAULT_TOKENIZER = "smollm2-135m"

# The prompt's wording lives with the task (retrieval_tasks.Passkey); these names are kept for callers.
PASSKEY = TASKS["passkey"]
NEEDLE, INTRO, QUESTION, ANSWER_PREFIX = PASSKEY.needle, PASSKEY.intro, PASSKEY.question, PASSKEY.answer_prefix
# Plain text, not the chat template: it also suits base models, and dense SmolLM2-135M-Instruct finds
# 9/9 keys at 1.5K tokens with it (in the assistant turn it often began "The pass key is a ...").
USE_CHAT_TEMPLATE = False


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: str = DEFAULT_TOKENIZER):
    """A local tokenizer: a packaged model name, a .gguf file or a Hugging Face folder (cached: ~5 s)."""
    import os

    from transformers import AutoTokenizer

    from edgekit.exporters.sources import PACKAGED, packaged_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = packaged_path(spec) if spec in PACKAGED else Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    raise EdgekitError(f"tokenizer '{spec}' is not a packaged model, a .gguf file or a Hugging Face folder")


def build_prompt(tokenizer, length: int, depth: float, key: str) -> Prompt:
    """A prompt whose model input is at most `length` tokens (short by less than one filler sentence)."""
    return PASSKEY.prompt(tokenizer, length, key, depth).prompt


def score(logits: np.ndarray, answer_ids: Sequence[int]) -> tuple[bool, list[int]]:
    """Found iff the argmax of every answer position is the answer token; also returns the argmaxes.

    `logits` (N, vocab) belong to the last N inputs of prompt + answer[:-1] (see haystack.score).
    """
    answer = Prompt((), tuple(answer_ids), ((0, len(answer_ids)),), ())
    result = haystack.score(logits, answer, hint=f": export with logits_to_keep={LOGITS_TO_KEEP}")
    return result.correct, result.predicted


def passkey(models: Sequence[str], lengths: Sequence[int], depths: Sequence[float], trials: int = 1,
            seed: int = 0, ep: str = "cpu", threads: int | None = None, on_step: Progress | None = None,
            tokenizer: str = DEFAULT_TOKENIZER) -> dict:
    """Score every model on the same prompts (one per length, depth and trial); JSON-able results.

    A prompt that fails is recorded with its status and reason, as `profile` does, and the sweep goes on.
    """
    from edgekit.profiling import environment
    from edgekit.session import Session

    methods = check_request(models, lengths, depths, trials, ep, tokenizer, threads)
    tok = load_tokenizer(tokenizer)
    cases = make_cases(tok, lengths, depths, trials, seed)
    results = []
    for model, method in zip(models, methods):
        session = Session(model, ep=ep, threads=threads)
        for case in cases:
            if on_step:
                on_step(f"{Path(model).name} @ {case['seq_len']}, depth {case['depth']:g}", len(results))
            results.append({"model": model, "method": method, **_try_case(session, tok, case)})
    return {"results": results, "summary": summarize(results), "environment": environment(ep, threads),
            "settings": {"lengths": list(lengths), "depths": list(depths), "trials": trials, "seed": seed,
                         "tokenizer": tokenizer, "chat_template": USE_CHAT_TEMPLATE}}


def check_request(models, lengths, depths, trials: int, ep: str = "cpu",
                  tokenizer: str = DEFAULT_TOKENIZER, threads: int | None = None) -> list[str]:
    """Fail on bad input before any long run; returns each model's edgekit method."""
    from edgekit.ep_profiles import load_profile
    from edgekit.profiling import check_settings

    _check_values(models, lengths, depths)
    check_settings(trials=trials, threads=threads)
    load_profile(ep).providers()
    tok = load_tokenizer(tokenizer)
    build_prompt(tok, min(lengths), 0.5, "12345")  # too short for the fixed text: say so now
    return [_model_info(m, len(tok)) for m in models]


def _check_values(models, lengths, depths) -> None:
    if not models:
        raise EdgekitError("no models to test")
    for model in models:
        if not Path(model).is_file():
            raise EdgekitError(f"model file not found: {model}")
    if not lengths or min(lengths) < 1:
        raise EdgekitError(f"lengths must be positive integers, got {list(lengths)}")
    if not depths or not all(0.0 <= d <= 1.0 for d in depths):
        raise EdgekitError(f"depths must be fractions in [0, 1], got {list(depths)}")


def _model_info(path: str, vocab: int) -> str:
    """The model's edgekit method; raises if its logits cannot score a passkey answer."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    outputs = {o.name: o for o in proto.graph.output}
    if "logits" not in outputs:
        raise EdgekitError(f"{path} has no 'logits' output: export it with edgekit")
    dims = outputs["logits"].type.tensor_type.shape.dim
    if len(dims) != 3:
        raise EdgekitError(f"{path} emits only the last token's logits; re-export it with "
                           f"--logits-to-keep {LOGITS_TO_KEEP} to score passkey answers")
    if dims[2].HasField("dim_value") and dims[2].dim_value != vocab:
        raise EdgekitError(f"{path} has a vocabulary of {dims[2].dim_value} tokens but the passkey "
                           f"tokenizer has {vocab}: export the model the tokenizer belongs to")
    return props.get("edgekit.method", "unknown")


def make_cases(tokenizer, lengths, depths, trials: int, seed: int) -> list[dict]:
    """One prompt per (length, depth, trial) with a seeded key: every model sees the same prompts."""
    rng = random.Random(seed)
    cases = []
    for seq_len in lengths:
        for depth in depths:
            for trial in range(trials):
                key = str(rng.randint(10000, 99999))
                prompt = build_prompt(tokenizer, seq_len, depth, key)
                cases.append({"seq_len": seq_len, "depth": depth, "trial": trial, "prompt": prompt, "key": key})
    return cases


def _try_case(session, tokenizer, case: dict) -> dict:
    """One prompt's result; a failure (ONNX Runtime rejecting the prompt, ...) is recorded, not raised."""
    try:
        return {**_run_case(session, tokenizer, case), "status": "ok"}
    except EdgekitError as exc:
        return {"seq_len": case["seq_len"], "depth": case["depth"], "trial": case["trial"],
                "key": case["key"], "found": False, "status": "error", "error": first_line(exc)}


def _run_case(session, tokenizer, case: dict) -> dict:
    prompt = case["prompt"]
    ids = prompt.model_input
    logits = session.run({"input_ids": ids}, outputs=["logits"])["logits"][0]  # (N, vocab)
    found, predicted = score(logits, prompt.answer_ids)
    return {"seq_len": case["seq_len"], "tokens": int(ids.shape[1]), "depth": case["depth"],
            "trial": case["trial"], "key": case["key"], "found": found,
            "answer": tokenizer.decode(predicted).strip()}


def summarize(results: list[dict]) -> list[dict]:
    """found / total per (model, length), in the order the results came."""
    counts: dict[tuple, dict] = {}
    for r in results:
        row = counts.setdefault((r["model"], r["seq_len"]), {"model": r["model"], "method": r["method"],
                                                             "seq_len": r["seq_len"], "found": 0, "total": 0,
                                                             "failed": 0})
        row["found"] += int(r["found"])
        row["failed"] += int(r.get("status", "ok") != "ok")
        row["total"] += 1
    return list(counts.values())


def markdown(report: dict) -> str:
    """One row per length, one column per model: keys found / prompts; why prompts failed, under the table."""
    from edgekit.report import footnote_lines, footnotes

    summary = report["summary"]
    models = list(dict.fromkeys((s["model"], s["method"]) for s in summary))
    cells = {(s["model"], s["seq_len"]): f"{s['found']}/{s['total']}"
             + (f" ({s['failed']} failed)" if s.get("failed") else "") for s in summary}
    lengths = list(dict.fromkeys(s["seq_len"] for s in summary))
    rows = ["| tokens | " + " | ".join(f"{Path(m).name} ({method})" for m, method in models) + " |",
            "|---:|" + "---:|" * len(models)]
    for n in lengths:
        rows.append(f"| {n} | " + " | ".join(cells.get((m, n), "—") for m, _ in models) + " |")
    results = report["results"]
    notes = footnote_lines(results, footnotes(results),
                           lambda r: f"{Path(r['model']).name} @ {r['seq_len']} tokens, depth {r['depth']:g}")
    rows += ([""] + notes) if notes else []
    settings = report.get("settings", {})
    footer = (f"\npass key found / prompts; depths {', '.join(f'{d:g}' for d in settings.get('depths', []))}, "
              f"{settings.get('trials', '?')} trial(s) each, seed {settings.get('seed', '?')}; "
              f"greedy answer checked by teacher forcing")
    return "\n".join(rows) + "\n" + footer
