"""`perplexity`: mean next-token loss over long windows of real text, computed from ONNX Runtime's logits.

The text is cut into non-overlapping windows of each length, taken from its start (so every length reads
the same tokens first); each window is one prefill of a model exported with `--logits-to-keep 0` (logits
at every position), and the loss is the mean negative log-likelihood over every predicted token (a
window of L tokens predicts L - 1). A sparse prefill (DHSA) differs from dense only where its queries
drop keys, so its ratio to dense at long windows says what the sparsity costs.

The default text is Python's own documentation (`pydoc_data.topics`, in the standard library: prose and
code examples that nobody evaluated here wrote), the same on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekit.errors import EdgekitError, first_line

Progress = Callable[[str, int, int], None]  # (what runs now, how many are done, how many in all)
DEFAULT_TEXT = "pydoc_data.topics"
ROWS_PER_CHUNK = 1024  # rows of logits turned into losses at once: float64 copies stay ~0.4 GB at 49K vocab


def default_text() -> str:
    """Python's pydoc topics (~465K characters), in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path: str | None) -> str:
    """The text to score (the default when None); an unreadable file is one error."""
    if path is None:
        return default_text()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgekitError(f"text file not found: {path}") from None
    except UnicodeDecodeError:
        raise EdgekitError(f"cannot read text file {path}: it is not UTF-8 text") from None
    except OSError as exc:
        raise EdgekitError(f"cannot read text file {path}: {exc.strerror or exc}") from None


def read_token_ids(path: str) -> np.ndarray:
    """Token ids from a .npy file or a text file of integers (spaces, commas or newlines between)."""
    try:
        if path.endswith(".npy"):
            ids = np.load(path, allow_pickle=False)
        else:
            ids = np.array(Path(path).read_text(encoding="utf-8").replace(",", " ").split(), dtype=np.int64)
    except FileNotFoundError:
        raise EdgekitError(f"token id file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"cannot read token ids from {path}: {first_line(exc)}") from None
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise EdgekitError(f"{path} must hold one flat list of integer token ids, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] under logits[:-1], and how many tokens that is.

    `logits` (S, vocab), `ids` (S,): row t predicts token t + 1. Chunked, in float64.
    """
    total = 0.0
    for lo in range(0, len(ids) - 1, ROWS_PER_CHUNK):
        rows = logits[lo:min(lo + ROWS_PER_CHUNK, len(ids) - 1)].astype(np.float64)  # (C, vocab)
        peak = rows.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
        total += float((log_z - rows[np.arange(len(rows)), ids[lo + 1:lo + 1 + len(rows)]]).sum())
    return total, len(ids) - 1


def windows(ids: np.ndarray, length: int, limit: int | None) -> list[np.ndarray]:
    """Non-overlapping windows of `length` tokens from the start (at most `limit`); too short: an error."""
    n = len(ids) // length if limit is None else min(limit, len(ids) // length)
    if n == 0:
        raise EdgekitError(f"the text holds {len(ids)} tokens: too short for one window of {length}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def perplexity(models: Sequence[str], lengths: Sequence[int], *, text: str | None = None,
               token_ids: str | None = None, windows_per_length: int | None = None,
               budgets: Sequence[int] | None = None, tokenizer: str | None = None, ep: str = "cpu",
               threads: int | None = None, on_step: Progress | None = None) -> dict:
    """Perplexity of every model (DHSA ones at each budget) at each window length; JSON-able results."""
    from edgekit.profiling import environment

    variants, ids, source = check_request(models, lengths, text, token_ids, windows_per_length, budgets, tokenizer,
                                          ep, threads)
    plan = {n: windows(ids, n, windows_per_length) for n in lengths}
    total = len(variants) * sum(map(len, plan.values()))
    results = []
    for m in variants:
        session = m.session(ep, threads)
        for length, chunks in plan.items():
            done = sum(r["windows"] for r in results)
            results.append({"model": m.path, "method": m.method, "budget": m.budget, "seq_len": length,
                            **_score_windows(session, chunks, on_step, m.label, done, total)})
    return {"kind": "perplexity", "results": results, "summary": summarize(results),
            "environment": environment(ep, threads),
            "settings": {"lengths": list(lengths), "windows": windows_per_length, "budgets": list(budgets or []),
                         "text": source, "text_tokens": int(len(ids)), "tokenizer": source.get("tokenizer")}}


def _score_windows(session, chunks, on_step, label: str, done: int, total: int) -> dict:
    """One length's windows: summed loss, or the first failure (recorded; the sweep goes on)."""
    loss, count = 0.0, 0
    for i, window in enumerate(chunks):
        if on_step:
            on_step(f"{label} @ {len(window)}, window {i + 1}/{len(chunks)}", done + i, total)
        try:
            logits = session.run({"input_ids": window[None]}, outputs=["logits"])["logits"][0]  # (S, vocab)
        except EdgekitError as exc:
            return {"status": "error", "error": first_line(exc), "windows": len(chunks)}
        window_loss, n = nll(logits, window)
        loss, count = loss + window_loss, count + n
    mean = loss / count
    return {"status": "ok", "windows": len(chunks), "tokens": count, "nll": mean, "ppl": float(np.exp(mean))}


def check_request(models, lengths, text, token_ids, windows_per_length, budgets, tokenizer, ep, threads):
    """Everything checked and the text tokenized before any long run: (variants, ids, source)."""
    from edgekit.ep_profiles import load_profile
    from edgekit.eval_models import check_lengths, load_models
    from edgekit.profiling import check_settings

    if text is not None and token_ids is not None:
        raise EdgekitError("give the text as --text FILE or --token-ids FILE, not both")
    if windows_per_length is not None and windows_per_length < 1:
        raise EdgekitError(f"--windows must be >= 1, got {windows_per_length}")
    check_settings(threads=threads)
    load_profile(ep).providers()
    raw = read_text(text) if token_ids is None else None
    variants = load_models(models, budgets)
    check_lengths(variants, lengths)
    for m in variants:
        if m.logits_rows is not None:
            which = "its last token" if m.logits_rows == 1 else f"its last {m.logits_rows} tokens"
            raise EdgekitError(f"{m.path} emits the logits of {which} only; perplexity needs every position: "
                               f"re-export it with --logits-to-keep 0")
    ids, source = _tokens(variants, raw, text, token_ids, tokenizer)
    for length in lengths:
        windows(ids, length, windows_per_length)
    return variants, ids, source


def _tokens(variants, raw: str | None, text: str | None, token_ids: str | None, tokenizer: str | None):
    """Token ids of the text (through the models' tokenizer) or from the id file; what they came from."""
    from edgekit.eval_models import load_checked_tokenizer, vocab_size

    if raw is None:
        ids = read_token_ids(token_ids)
        vocab = min(vocab_size(m) for m in variants)
        if ids.size and not (0 <= ids.min() and ids.max() < vocab):
            raise EdgekitError(f"{token_ids} holds token ids outside the models' vocabulary [0, {vocab})")
        return ids, {"token_ids": token_ids}
    tok, spec = load_checked_tokenizer(variants, tokenizer)
    ids = np.array(tok.encode(raw, add_special_tokens=False), dtype=np.int64)
    return ids, {"text": text or DEFAULT_TEXT, "characters": len(raw), "tokenizer": spec}


def summarize(results: list[dict]) -> list[dict]:
    """ppl per (model, budget, length), with the ratio to the dense model's ppl at the same length."""
    dense = {r["seq_len"]: r["ppl"] for r in results if r["method"] == "dense" and r["status"] == "ok"}
    return [{"model": r["model"], "method": r["method"], "budget": r["budget"], "seq_len": r["seq_len"],
             "ppl": r.get("ppl"), "ratio_to_dense": (r["ppl"] / dense[r["seq_len"]]
                                                     if r.get("ppl") and r["seq_len"] in dense else None)}
            for r in results]


def markdown(report: dict) -> str:
    """One row per length, one column per model (and budget): ppl, with DHSA's ratio to dense."""
    summary = report["summary"]
    columns = list(dict.fromkeys((s["model"], s["method"], s["budget"]) for s in summary))
    cells = {(s["model"], s["method"], s["budget"], s["seq_len"]): _cell(s) for s in summary}
    lengths = list(dict.fromkeys(s["seq_len"] for s in summary))
    rows = ["| tokens | " + " | ".join(_column(*c) for c in columns) + " |", "|---:|" + "---:|" * len(columns)]
    rows += [f"| {n} | " + " | ".join(cells.get((*c, n), "—") for c in columns) + " |" for n in lengths]
    errors = [f"- {Path(r['model']).name} @ {r['seq_len']}: {r['error']}" for r in report["results"]
              if r["status"] != "ok"]
    settings = report["settings"]
    text = settings["text"]
    where = text.get("text") or text.get("token_ids")
    footer = (f"\nperplexity over {settings['windows'] or 'all'} non-overlapping window(s) per length of {where} "
              f"({settings['text_tokens']} tokens); (1.234x) = ratio to dense")
    return "\n".join(rows + ([""] + errors if errors else [])) + "\n" + footer


def _column(model: str, method: str, budget: int | None) -> str:
    return f"{Path(model).name} ({method}" + (f", budget {budget})" if budget else ")")


def _cell(s: dict) -> str:
    if s["ppl"] is None:
        return "failed"
    ratio = f" ({s['ratio_to_dense']:.3f}x)" if s["ratio_to_dense"] and s["method"] != "dense" else ""
    return f"{s['ppl']:.3f}{ratio}"
