"""`retrieval`: RULER-style synthetic retrieval (retrieval_tasks.py) scored by ONNX Runtime, one prefill each.

Every model (a DHSA model at every budget asked) sees the same seeded prompts. A sample is correct when
every answer token is the greedy choice (teacher forcing, see haystack.py); tasks with several values
(multivalue, vartrack) also get partial credit, the share of values produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from edgekit import haystack
from edgekit.errors import EdgekitError, first_line
from edgekit.retrieval_tasks import get_tasks, make_cases

Progress = Callable[[str, int, int], None]  # (what runs now, how many are done, how many in all)
DEFAULT_TASKS = ("passkey", "multikey", "multivalue", "vartrack")
SEVERAL_VALUES = ("multivalue", "vartrack")  # tasks whose table cells show partial credit
LOGITS_HINT = "re-export it with --logits-to-keep 64 (or 0: every position)"


def retrieval(models: Sequence[str], tasks: Sequence[str] = DEFAULT_TASKS, lengths: Sequence[int] = (4096,),
              samples: int = 5, seed: int = 0, budgets: Sequence[int] | None = None, tokenizer: str | None = None,
              ep: str = "cpu", threads: int | None = None, on_step: Progress | None = None) -> dict:
    """Accuracy of every model (variant) on every (task, length); JSON-able results."""
    from edgekit.profiling import environment

    variants, tok, spec, cases = check_request(models, tasks, lengths, samples, seed, budgets, tokenizer, ep, threads)
    results, total = [], len(variants) * len(cases)
    for m in variants:
        session = m.session(ep, threads)
        for case in cases:
            if on_step:
                on_step(f"{m.label}: {case['task']} @ {case['seq_len']}", len(results), total)
            results.append({"model": m.path, "method": m.method, "budget": m.budget,
                            "exported_budget": m.exported_budget, **_try_case(session, tok, case)})
    return {"kind": "retrieval", "results": results, "summary": summarize(results),
            "environment": environment(ep, threads),
            "settings": {"tasks": list(tasks), "lengths": list(lengths), "samples": samples, "seed": seed,
                         "budgets": list(budgets or []), "tokenizer": spec}}


def check_request(models, tasks, lengths, samples: int, seed: int, budgets, tokenizer, ep, threads):
    """Everything checked, prompts built, before any long run: (variants, tokenizer, its spec, cases)."""
    from edgekit.ep_profiles import load_profile
    from edgekit.eval_models import check_lengths, load_checked_tokenizer, load_models
    from edgekit.profiling import check_settings

    chosen = get_tasks(list(tasks))
    if samples < 1:
        raise EdgekitError(f"--samples must be >= 1, got {samples}")
    check_settings(threads=threads)
    load_profile(ep).providers()
    variants = load_models(models, budgets)
    check_lengths(variants, lengths)
    tok, spec = load_checked_tokenizer(variants, tokenizer)
    cases = make_cases(tok, chosen, lengths, samples, seed)
    longest = max(len(c["sample"].prompt.answer_ids) for c in cases)
    for m in variants:
        if m.logits_rows is not None and m.logits_rows < longest:
            raise EdgekitError(f"{m.path} emits the logits of its last {m.logits_rows} token(s); the longest "
                               f"answer needs {longest}: {LOGITS_HINT}")
    return variants, tok, spec, cases


def _try_case(session, tokenizer, case: dict) -> dict:
    """One prompt's result; a failure (ONNX Runtime rejecting the prompt, ...) is recorded, not raised."""
    sample = case["sample"]
    row = {"task": case["task"], "seq_len": case["seq_len"], "index": case["index"],
           "tokens": int(sample.prompt.model_input.shape[1]), "values": list(sample.values)}
    try:
        logits = session.run({"input_ids": sample.prompt.model_input}, outputs=["logits"])["logits"][0]
        result = haystack.score(logits, sample.prompt, hint=f": {LOGITS_HINT}")
    except EdgekitError as exc:
        return {**row, "status": "error", "error": first_line(exc), "correct": False, "parts_correct": 0,
                "parts": len(sample.values)}
    return {**row, "status": "ok", "correct": result.correct, "parts_correct": sum(result.parts_correct),
            "parts": len(sample.values), "answer": tokenizer.decode(result.predicted).strip()}


def summarize(results: list[dict]) -> list[dict]:
    """Per (model, budget, task, length): fully correct / total, partial credit, and the ratio to dense."""
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["model"], r["budget"], r["task"], r["seq_len"])
        row = rows.setdefault(key, {"model": r["model"], "method": r["method"], "budget": r["budget"],
                                    "exported_budget": r.get("exported_budget"), "task": r["task"],
                                    "seq_len": r["seq_len"], "found": 0, "total": 0, "failed": 0, "credit": 0.0})
        row["found"] += int(r["correct"])
        row["credit"] += r["parts_correct"] / r["parts"]
        row["failed"] += int(r["status"] != "ok")
        row["total"] += 1
    for s in rows.values():
        s["accuracy"], s["partial"] = s["found"] / s["total"], s.pop("credit") / s["total"]
    dense = {(s["task"], s["seq_len"]): s for s in rows.values() if s["method"] == "dense"}
    for s in rows.values():
        base = dense.get((s["task"], s["seq_len"]), {})
        for metric, ratio in (("accuracy", "ratio_to_dense"), ("partial", "partial_ratio_to_dense")):
            s[ratio] = s[metric] / base[metric] if base.get(metric) else None
    return list(rows.values())


def markdown(report: dict) -> str:
    """One row per (task, length), one column per model and budget: correct / samples (partial credit)."""
    summary = report["summary"]
    columns = list(dict.fromkeys((s["model"], s["method"], s["budget"]) for s in summary))
    cells = {(s["model"], s["method"], s["budget"], s["task"], s["seq_len"]): _cell(s) for s in summary}
    points = list(dict.fromkeys((s["task"], s["seq_len"]) for s in summary))
    rows = ["| task | tokens | " + " | ".join(_column(*c) for c in columns) + " |",
            "|---|---:|" + "---:|" * len(columns)]
    rows += [f"| {t} | {n} | " + " | ".join(cells.get((*c, t, n), "—") for c in columns) + " |" for t, n in points]
    errors = list(dict.fromkeys(f"- {Path(r['model']).name}: {r['error']}" for r in report["results"]
                                if r["status"] != "ok"))
    settings = report["settings"]
    footer = (f"\nfully correct / samples (partial credit where an answer has several values; x = ratio to dense); "
              f"{settings['samples']} sample(s) per task and length, seed {settings['seed']}; greedy answer "
              f"checked by teacher forcing")
    return "\n".join(rows + ([""] + errors if errors else [])) + "\n" + footer


def _column(model: str, method: str, budget: int | None) -> str:
    return f"{Path(model).name} ({method}" + (f", budget {budget})" if budget else ")")


def _cell(s: dict) -> str:
    """'1/2 0.50x (62% 1.00x)': fully correct, its ratio to dense; partial credit (several values), its ratio."""
    sparse = s["method"] != "dense"
    ratio = lambda key: f" {s[key]:.2f}x" if sparse and s.get(key) is not None else ""  # noqa: E731
    cell = f"{s['found']}/{s['total']}" + ratio("ratio_to_dense")
    if s["task"] in SEVERAL_VALUES:
        cell += f" ({s['partial']:.0%}{ratio('partial_ratio_to_dense')})"
    return cell + (f" ({s['failed']} failed)" if s["failed"] else "")


METRICS = (("accuracy", "fully correct"), ("partial", "values found (partial credit)"))


def plot_budgets(report: dict, path: str) -> None:
    """Accuracy per task vs DHSA budget, a column per length, a row per metric (fully correct, partial
    credit); dense as a dashed line in the task's colour (a budget >= the length is dense exactly)."""
    from edgekit.files import save_figure
    from edgekit.html_report import _pyplot

    plt = _pyplot()
    summary = report["summary"]
    lengths = list(dict.fromkeys(s["seq_len"] for s in summary))
    fig, axes = plt.subplots(len(METRICS), len(lengths), figsize=(5 * len(lengths), 7), squeeze=False)
    for row, (metric, label) in enumerate(METRICS):
        for ax, length in zip(axes[row], lengths):
            _budget_panel(ax, [s for s in summary if s["seq_len"] == length], metric)
            ax.set(title=f"{length} tokens", ylabel=label, ylim=(-0.05, 1.05),
                   xlabel="DHSA budget_tokens (keys per query)" if row == len(METRICS) - 1 else "")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def _budget_panel(ax, rows: list[dict], metric: str) -> None:
    """One length's tasks: DHSA points over the budget (log2 axis), dense as a horizontal line."""
    budget = lambda s: s["budget"] or s["exported_budget"]  # noqa: E731
    for i, task in enumerate(dict.fromkeys(s["task"] for s in rows)):
        mine = [s for s in rows if s["task"] == task]
        sparse = sorted((budget(s), s[metric]) for s in mine if s["method"] != "dense" and budget(s))
        if sparse:
            ax.plot(*zip(*sparse), "o-", color=f"C{i}", label=f"{task} (DHSA)")
        for s in mine:
            if s["method"] == "dense":
                ax.axhline(s[metric], color=f"C{i}", linestyle="--", alpha=0.7, label=f"{task} (dense)")
    budgets = sorted({budget(s) for s in rows if s["method"] != "dense"} - {None})
    ax.set_xscale("log", base=2)
    if budgets:
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
    ax.grid(True, alpha=0.3)
