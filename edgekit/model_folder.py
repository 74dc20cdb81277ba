"""An edgekit model folder for text generation: prefill.onnx + decode.onnx (+ tokenizer/) + edgekit.json.

The prefill keeps the export's method (dense or DHSA); the decode step is dense over a pre-allocated cache
that it updates in place. The manifest says what an app needs to run the pair: its files, task and
method, where the tokenizer came from, the cache (its layout and default context) and the generation
defaults (stop ids, chat template). The folder is checked before it appears: both graphs against
PyTorch on every output, then greedy decoding through them token for token.

Format 2 (in-place cache: decode.onnx takes `attention_mask` and context-long buffers) replaced format 1
(a decode step that concatenated its cache); a format-1 folder is refused with a hint to re-export.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, ModelLoadError, first_line
from edgekit.files import atomic_folder, check_writable_folder

MANIFEST, PREFILL, DECODE, TOKENIZER = "edgekit.json", "prefill.onnx", "decode.onnx", "tokenizer"
FORMAT = 2
CHECK_STEPS, CHECK_PROMPT = 8, 24  # the greedy check at export: 8 tokens after a 24-token prompt
DEFAULT_CONTEXT = 8192  # the cache a Generator allocates unless told (capped at the model's positions)
CACHE = {"update": "in-place", "op": "com.microsoft.GroupQueryAttention",
         "layout": ["batch", "kv_heads", "context", "head_dim"], "dtype": "float32"}


@dataclasses.dataclass(frozen=True)
class Manifest:
    task: str
    method: str
    model: str
    options: dict
    files: dict  # role (prefill, decode, tokenizer) -> path inside the folder
    tokenizer_source: str | None  # the GGUF file or Hugging Face folder the tokenizer was read from
    eos_token_ids: tuple[int, ...]
    chat_template: bool
    max_context: int  # largest context allowed: the trained positions (0: unknown), or --beyond-positions' context
    context: int  # tokens (prompt + generated) the cache holds by default
    cache: dict = dataclasses.field(default_factory=lambda: dict(CACHE))
    check: dict = dataclasses.field(default_factory=dict)
    precision: str = "float32"  # or the precision `edgekit quantize` gave both graphs
    quantization: dict = dataclasses.field(default_factory=dict)  # its settings and per-graph agreement
    format: int = FORMAT

    def write(self, folder: Path) -> None:
        data = {**dataclasses.asdict(self), "eos_token_ids": list(self.eos_token_ids)}
        (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a model folder; a missing folder, manifest or graph is one ModelLoadError naming it."""
    folder = Path(folder)
    hint = f"export it with `edgekit export MODEL --with-decode -o {folder}`"
    if not folder.is_dir():
        what = "is a file, not a model folder" if folder.is_file() else "not found"
        raise ModelLoadError(f"model folder {folder} {what}: {hint}")
    try:
        data = json.loads((folder / MANIFEST).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object was expected, got {type(data).__name__}")
        _check_format(folder, data.get("format"), hint)
        manifest = Manifest(**{**data, "eos_token_ids": tuple(data.get("eos_token_ids", ()))})
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} has no {MANIFEST}: not an edgekit model folder; {hint}") from None
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{folder / MANIFEST} is not a valid edgekit manifest: {first_line(exc)}") from None
    for role, name in manifest.files.items():
        if name and not (folder / name).exists():
            raise ModelLoadError(f"{folder} is missing its {role} ({name}); {hint}")
    return manifest


def _check_format(folder: Path, found, hint: str) -> None:
    """A manifest of another format is refused by name (one without a format is simply not valid)."""
    if isinstance(found, int) and found != FORMAT:
        what = "an older edgekit's (its decode step copies the cache every token)" if found < FORMAT else \
            "a newer edgekit's"
        raise ModelLoadError(f"{folder / MANIFEST} is format {found}, {what}; this edgekit reads format {FORMAT}: "
                             f"{hint}")


def export_folder(model: str, output: str, method: str | None = None, *, weights: str | None = None,
                  tolerance: float | None = None, seed: int = 0, context: int | None = None,
                  beyond_positions: bool = False, **options) -> dict:
    """Export the prefill (with `method`) and the dense decode step into one folder, atomically.

    `context`: the cache length a Generator allocates by default (prompt + generated tokens; default the
    model's positions, at most 8192). `beyond_positions`: allow a context past the positions the model was
    trained for (its rotary positions are extrapolated there, as llama.cpp does with a larger n_ctx; the
    long-context benchmarks run SmolLM2, trained to 8192, at 16K).
    Returns {"path", "prefill": ExportResult, "decode": ExportResult, "manifest": Manifest}.
    """
    from edgekit.exporters import sources
    from edgekit.exporting import export

    if options.get("logits_to_keep", 1) != 1 or "step" in options:
        raise EdgekitError("--with-decode writes last-token logits for generation: drop --logits-to-keep")
    if beyond_positions and context is None:
        raise EdgekitError("--beyond-positions allows a --context past the model's positions: give --context N")
    check_writable_folder(output, MANIFEST)
    loaded = sources.load(model, weights=weights)
    family, torch_model, name = loaded
    context = folder_context(torch_model, context, beyond_positions)
    family.interface(torch_model, step="decode")  # a model the decode step cannot take fails before any export
    graph_options = family.split_options(method, options)[1]
    with atomic_folder(output, MANIFEST) as tmp:
        prefill = export(model, str(tmp / PREFILL), method, tolerance=tolerance, seed=seed, loaded=loaded, **options)
        decode = export(model, str(tmp / DECODE), "dense", tolerance=tolerance, seed=seed, loaded=loaded,
                        step="decode", **graph_options)
        tokenizer = save_tokenizer(None if weights else sources.tokenizer_source(model), tmp / TOKENIZER)
        manifest = make_manifest(torch_model, name, prefill, tokenizer, model if weights is None else None, context)
        if beyond_positions and manifest.max_context and context > manifest.max_context:  # the folder's new limit
            manifest = dataclasses.replace(manifest, max_context=context)
        manifest.write(tmp)
        check = check_greedy(family, torch_model, prefill.method, prefill.options, tmp, seed)
        manifest = dataclasses.replace(manifest, check=check)
        manifest.write(tmp)
    return {"path": str(output), "prefill": prefill, "decode": decode, "manifest": manifest}


def save_tokenizer(source: Path | None, target: Path):
    """Copy the model's tokenizer into the folder (apps then need no GGUF); None if it has none."""
    if source is None:
        return None
    from edgekit.passkey import load_tokenizer

    try:
        tokenizer = load_tokenizer(str(source))
    except Exception:  # a Hugging Face folder without tokenizer files: the model takes token ids
        return None
    tokenizer.save_pretrained(target)
    return tokenizer


def folder_context(torch_model, context: int | None, beyond_positions: bool = False) -> int:
    """The default cache length: as asked (within the model's positions unless `beyond_positions`), else
    theirs up to DEFAULT_CONTEXT."""
    from edgekit.generation import check_context

    positions = max_positions(torch_model)
    if context is None:
        return min(positions or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    return check_context(context, 0 if beyond_positions else positions)


def max_positions(torch_model) -> int:
    return int(getattr(torch_model.config, "max_position_embeddings", 0) or 0)


def make_manifest(torch_model, name: str, prefill, tokenizer, spec: str | None, context: int) -> Manifest:
    from edgekit.exporters import sources

    source = sources.tokenizer_source(spec) if spec and tokenizer is not None else None
    return Manifest(task=prefill.task, method=prefill.method, model=name, options=prefill.options,
                    files={"prefill": PREFILL, "decode": DECODE, "tokenizer": TOKENIZER if tokenizer else None},
                    tokenizer_source=str(source) if source else None, eos_token_ids=eos_ids(torch_model),
                    chat_template=bool(tokenizer is not None and tokenizer.chat_template),
                    max_context=max_positions(torch_model), context=context)


def eos_ids(torch_model) -> tuple[int, ...]:
    """Stop ids from the generation config (what transformers' generate stops on), else the model config."""
    eos = getattr(getattr(torch_model, "generation_config", None), "eos_token_id", None)
    eos = torch_model.config.eos_token_id if eos is None else eos
    return tuple(int(e) for e in ([] if eos is None else eos if isinstance(eos, (list, tuple)) else [eos]))


def torch_greedy(family, torch_model, method: str, options: dict, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens of the PyTorch prefill and decode graphs the folder was exported from (the decode graph
    over a cache of prompt + steps rows, filled from the prefill's)."""
    import torch

    with torch.no_grad():
        logits, *present = family.prepare(torch_model, method, options)(torch.tensor([prompt]))
        decode = family.prepare(torch_model, "dense", {}, step="decode")
        cache = [torch.nn.functional.pad(t, (0, 0, 0, steps)) for t in present]  # (1, Hkv, S + steps, D)
        tokens = [int(logits[0].argmax())]
        for _ in range(steps - 1):
            mask = torch.ones(1, len(prompt) + len(tokens), dtype=torch.int64)
            logits, *cache = decode(torch.tensor([[tokens[-1]]]), mask, *cache)
            tokens.append(int(logits[0].argmax()))
    return tokens


def check_greedy(family, torch_model, method: str, options: dict, folder: Path, seed: int) -> dict:
    """ONNX Runtime's greedy tokens through the folder must be PyTorch's, every one."""
    from edgekit.generation import Generator

    prompt = np.random.default_rng(seed).integers(0, torch_model.config.vocab_size, CHECK_PROMPT).tolist()
    want = torch_greedy(family, torch_model, method, options, prompt, CHECK_STEPS)
    got = list(Generator(folder).generate(prompt, CHECK_STEPS, ignore_eos=True).token_ids)
    if got != want:
        step = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise EdgekitError(f"greedy decoding through the exported graphs differs from PyTorch at step {step + 1}"
                           f" of {CHECK_STEPS}: token {got[step]} vs {want[step]}")
    return {"greedy_steps": CHECK_STEPS, "prompt_tokens": CHECK_PROMPT, "tokens_match": True}
