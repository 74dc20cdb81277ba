"""The `edgekit` command line: a thin Typer layer over the Python API.

Results go to stdout, progress and logs to stderr. Every EdgekitError becomes one `Error: ...` line and
exit code 1 (set EDGEKIT_DEBUG=1 to see the traceback instead); a usage error is shown as click shows it
(usage, the --help hint, the error) with exit code 2; Ctrl-C or SIGTERM prints "Aborted." and exits with
128 + the signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edgekit.errors import EdgekitError
from edgekit.files import check_writable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export efficient-attention models to ONNX with edgekit ops, run and profile them.")
err = Console(stderr=True)


class _StepProgress:
    """Progress of a long sweep on stderr (stdout holds only results). The bar appears at the first step,
    i.e. after the library has validated the request, so bad input prints nothing but its error line."""

    def __init__(self, total: int | None):
        self.total = total  # None: the library says it with the first step
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err)
        self.task = None

    def __call__(self, label: str, done: int, total: int | None = None) -> None:
        self.total = total or self.total
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(label, total=self.total)
        self.bar.update(self.task, description=label, completed=done)

    def __enter__(self) -> "_StepProgress":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.task is not None:
            if exc_type is None:
                self.bar.update(self.task, completed=self.total, description="done")
            self.bar.stop()


def _int_list(text: str | None, flag: str) -> list[int] | None:
    """'1,64' -> [1, 64]; None stays None (the task's defaults apply)."""
    if text is None:
        return None
    values = _values(text, int, flag)
    if not values or min(values) < 1:
        raise EdgekitError(f"{flag} wants positive integers, got '{text}'")
    return values


def _parse_options(pairs: List[str]) -> dict:
    """--option key=value (repeatable): any op attribute, typed as JSON when it parses (1, 0.5, [2, 3])."""
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgekitError(f"--option wants key=value, got '{pair}'")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


@app.command()
def export(
    model: str = typer.Argument(..., help="preset name, packaged model, Hugging Face folder or .gguf file"),
    output: str = typer.Option(..., "-o", "--output", help="ONNX file to write (a .gguf with --format gguf)"),
    file_format: str = typer.Option("onnx", "--format", help="onnx, or gguf: the dense LLM for llama.cpp (its "
                                                              "exact weights and, where the source has one, tokenizer)"),
    gguf_type: Optional[str] = typer.Option(None, help="--format gguf: matrices in f32, f16 or q8_0 [f32]"),
    method: Optional[str] = typer.Option(None, help="a method of the model's family (`edgekit models`): dense, "
                                                    "dhsa, hilo, codebook, ... [the family's baseline]"),
    weights: Optional[Path] = typer.Option(None, help="local checkpoint (.safetensors, or a state-dict .pth) "
                                                      "loaded into the preset's shape"),
    option: List[str] = typer.Option([], "--option", "-O", help="op option key=value (repeatable), e.g. "
                                                                "-O budget_tokens=1024; see `edgekit ops`"),
    block_size: Optional[int] = typer.Option(None, help="DHSA: query tokens per block [128]"),
    chunk_size: Optional[int] = typer.Option(None, help="DHSA: target key-chunk length [64]"),
    fixed_chunks: bool = typer.Option(False, "--fixed-chunks", help="DHSA: fixed-size chunks, not adaptive"),
    plain_mean: bool = typer.Option(False, "--plain-mean",
                                    help="DHSA, chunk scores 0 and 2: chunk mean without sqrt(len) scaling"),
    chunk_score: Optional[int] = typer.Option(None, help="DHSA: 0 mean query . chunk mean (paper), 1 max-logit "
                                                         "bound, 2 both interleaved [2]"),
    budget_tokens: Optional[int] = typer.Option(None, help="DHSA: keys kept per query block [2048]"),
    sink_tokens: Optional[int] = typer.Option(None, help="DHSA: first keys always kept [128]"),
    local_tokens: Optional[int] = typer.Option(None, help="DHSA: keys before each block always kept [128]"),
    alpha: Optional[float] = typer.Option(None, help="HiLo: share of heads in the Lo-Fi (global) branch [0.9]"),
    window: Optional[int] = typer.Option(None, help="HiLo / window / SRA: window (pooling) size [2]"),
    check_tokens: Optional[int] = typer.Option(None, help="LLMs: prompt length of the ONNX-vs-PyTorch check [64]"),
    logits_to_keep: Optional[int] = typer.Option(None, help="LLMs: emit logits of the last N tokens (0: every token, "
                                                            "for `edgekit eval ppl`; N != 1: shape B, N or S, vocab)"),
    atol: Optional[float] = typer.Option(None, help="export check: max |ONNX Runtime - PyTorch| allowed, "
                                                    "times max(1, max |output|) [the family's, 1e-3]"),
    with_decode: bool = typer.Option(False, "--with-decode", help="LLMs: write a folder (-o DIR) with prefill.onnx, "
                                     "a dense cached decode.onnx, the tokenizer and edgekit.json, for "
                                     "`edgekit generate`"),
    context: Optional[int] = typer.Option(None, help="--with-decode: tokens (prompt + generated) the decode "
                                                     "cache holds by default [the model's positions, at most 8192]"),
    beyond_positions: bool = typer.Option(False, "--beyond-positions", help="--with-decode: allow a --context past "
                                          "the positions the model was trained for (extrapolated rotary positions)"),
):
    """Export a model (any kind) with the chosen method, checked against PyTorch on every output."""
    from edgekit.exporting import export as run_export

    flags = dict(block_size=block_size, chunk_size=chunk_size, budget_tokens=budget_tokens,
                 sink_tokens=sink_tokens, local_tokens=local_tokens, chunk_score=chunk_score, alpha=alpha,
                 window=window, check_tokens=check_tokens, logits_to_keep=logits_to_keep)
    options = {**_parse_options(option), **{k: v for k, v in flags.items() if v is not None}}
    if fixed_chunks:
        options["adaptive_chunks"] = 0
    if plain_mean:
        options["length_scaled"] = 0
    if file_format == "gguf":
        if method not in (None, "dense"):
            raise EdgekitError(f"--format gguf writes the dense model (llama.cpp runs its own attention): --method "
                               f"{method} does not apply")
        extra = dict(options, atol=atol, with_decode=with_decode or None)
        return _export_gguf(model, output, gguf_type, weights, [k for k, v in extra.items() if v is not None])
    if file_format != "onnx":
        raise EdgekitError(f"unknown --format '{file_format}': onnx or gguf")
    if gguf_type is not None:
        raise EdgekitError("--gguf-type applies to --format gguf only")
    if with_decode:
        return _export_folder(model, output, method, weights, atol, options, context, beyond_positions)
    if context is not None or beyond_positions:
        raise EdgekitError("--context (and --beyond-positions) sizes the decode cache of a model folder: it "
                           "needs --with-decode")
    check_writable(output)
    with err.status(f"exporting {model} ({method or 'baseline'})"):
        result = run_export(model, output, method=method, weights=str(weights) if weights else None,
                            tolerance=atol, **options)
    opts = ", ".join(f"{k}={v}" for k, v in result.options.items())
    typer.echo(f"wrote {result.path} ({result.size_mb:.1f} MB): {result.model}, {result.task}, method "
               f"{result.method}" + (f" [{opts}]" if opts else ""))
    check = ", ".join(f"{k} {v}" for k, v in result.check_workload.items())
    typer.echo(f"check: max |ONNX Runtime - PyTorch| = {result.max_abs_error:.2e} (worst output "
               f"'{result.worst_output}', {check}; tolerance {result.tolerance:.0e} x max|output|)")


def _export_gguf(model: str, output: str, gguf_type: str | None, weights, not_applying: list[str]) -> None:
    from edgekit.gguf_export import export_gguf

    if not_applying:
        names = ", ".join("--" + name.replace("_", "-") for name in not_applying)
        raise EdgekitError(f"--format gguf writes the dense model as it is, with no ONNX check: {names} "
                           "do not apply")
    with err.status(f"writing {model} as GGUF ({gguf_type or 'f32'})"):
        result = export_gguf(model, output, gguf_type or "f32", weights=str(weights) if weights else None)
    typer.echo(f"wrote {result.path} ({result.size_mb:.1f} MB): {result.model}, llama.cpp architecture {result.arch}, "
               f"{result.gguf_type}, {result.tensors} tensors, {result.vocabulary}")


def _export_folder(model: str, output: str, method, weights, atol, options: dict, context: int | None,
                   beyond_positions: bool = False) -> None:
    from edgekit.model_folder import MANIFEST, export_folder

    with err.status(f"exporting {model} ({method or 'baseline'}) with a decode step"):
        result = export_folder(model, output, method, weights=str(weights) if weights else None, tolerance=atol,
                               context=context, beyond_positions=beyond_positions, **options)
    m = result["manifest"]
    typer.echo(f"wrote {result['path']}/: prefill.onnx ({m.method}), decode.onnx (dense, cache of {m.context} "
               f"tokens updated in place), {MANIFEST}"
               + (", tokenizer/" if m.files.get("tokenizer") else " (no tokenizer: token ids in and out)"))
    for step in ("prefill", "decode"):
        r = result[step]
        typer.echo(f"check {step}: max |ONNX Runtime - PyTorch| = {r.max_abs_error:.2e} (worst output "
                   f"'{r.worst_output}'; tolerance {r.tolerance:.0e} x max|output|)")
    typer.echo(f"check generation: greedy {m.check['greedy_steps']} tokens identical to PyTorch")


@app.command()
def generate(
    model_dir: Path = typer.Argument(..., help="folder written by `edgekit export MODEL --with-decode -o DIR`"),
    prompt: Optional[str] = typer.Option(None, help="prompt text (through the model's tokenizer)"),
    prompt_ids: Optional[str] = typer.Option(None, help="prompt as comma-separated token ids (models without a "
                                                        "tokenizer)"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate at most"),
    temperature: float = typer.Option(0.0, help="sampling temperature (0: greedy)"),
    top_k: int = typer.Option(0, help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, help="sample within this probability mass (1: all)"),
    seed: Optional[int] = typer.Option(None, help="seed of the sampler"),
    stop: List[str] = typer.Option([], "--stop", help="stop string (repeatable); the text ends before it"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="do not stop at the model's end-of-sequence tokens"),
    ep: str = typer.Option("cpu", help="execution-provider profile (profiles/<name>.toml)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: the profile's)"),
    context: Optional[int] = typer.Option(None, help="tokens (prompt + generated) the cache holds "
                                                     "[the folder's, export --context]"),
):
    """Generate text, streamed to stdout; time to first token and tokens/s on stderr."""
    from edgekit.generation import Generator, Sampling

    if (prompt is None) == (prompt_ids is None):
        raise EdgekitError("give the prompt as --prompt TEXT or --prompt-ids 1,2,3 (one of them)")
    Sampling(temperature, top_k, top_p, seed)  # bad settings fail before the model loads
    generator = Generator(model_dir, ep=ep, threads=threads, context=context)
    source = prompt if prompt is not None else _token_ids(prompt_ids)
    pieces = generator.stream(source, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              stop=stop, chat=chat, ignore_eos=ignore_eos)
    for piece in pieces:
        sys.stdout.write(piece if isinstance(piece, str) else f"{piece} ")
        sys.stdout.flush()
    sys.stdout.write("\n")
    g = generator.last
    sys.stderr.write(f"prompt {g.prompt_tokens} tokens, time to first token {g.ttft_s * 1000:.0f} ms "
                     f"({g.prefill_tokens_per_s:.0f} tokens/s); generated {len(g.token_ids)} tokens, "
                     f"{g.decode_tokens_per_s:.1f} tokens/s after the first; stopped: {g.finish_reason}\n")


def _token_ids(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgekitError(f"--prompt-ids wants comma-separated integers, got '{text}'") from None


@app.command()
def profile(
    models: List[str] = typer.Argument(..., help="exported .onnx files, model folders (export --with-decode), or "
                                       ".gguf files / a packaged model name for llama.cpp; the first is the "
                                       "baseline"),
    seq_lens: Optional[str] = typer.Option(None, help="token models: comma-separated prompt lengths "
                                                      "[1024,4096,8192]"),
    image_sizes: Optional[str] = typer.Option(None, help="image models: comma-separated sizes in px [224]"),
    batch_sizes: Optional[str] = typer.Option(None, help="comma-separated batch sizes [1]"),
    repeat: int = typer.Option(3, help="timed runs per point (median and p90 reported)"),
    warmup: int = typer.Option(1, help="untimed runs first"),
    ep: str = typer.Option("cpu", help="execution-provider profile (profiles/<name>.toml)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: the profile's)"),
    timeout: Optional[float] = typer.Option(None, help="seconds allowed per model and workload"),
    memory_limit_mb: Optional[float] = typer.Option(None, help="stop a run above this RSS (default 90% of RAM)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the full results as JSON"),
    plot_out: Optional[str] = typer.Option(None, "--plot", help="write latency / memory figure (PNG)"),
    compare: Optional[Path] = typer.Option(None, help="baseline results to gate against (with --fail-on)"),
    fail_on: Optional[str] = typer.Option(None, help="e.g. latency:+10%,memory:+10%: exit 3 past a threshold, "
                                                     "4 when baseline rows are missing"),
    decode_tokens: Optional[int] = typer.Option(None, help="model folders (export --with-decode) and .gguf: "
                                                "generate N tokens after each prompt; adds TTFT, pp and tg "
                                                "tokens/s (llama-bench style)"),
    llamacpp_sweep: bool = typer.Option(False, "--llamacpp-sweep", help=".gguf models: tune llama.cpp (threads, "
                                        "n_batch/n_ubatch, flash attention, KV-cache type, mmap) and keep the "
                                        "fastest per length; every trial goes into --json"),
    llamacpp_sweep_at: Optional[int] = typer.Option(None, "--llamacpp-sweep-at", help="tune once at this prompt "
                                                    "length and apply the winner to every length [each length]"),
    llamacpp_sweep_axis: Optional[List[str]] = typer.Option(None, "--llamacpp-sweep-axis", help="AXIS=V1,V2 "
                                                            "(repeatable): the values to try, e.g. threads=1,2 "
                                                            "batch=512/512,2048/512 fa=on,off kv=f16,q8_0 mmap=off"),
    llamacpp_sweep_strategy: str = typer.Option("axes", "--llamacpp-sweep-strategy", help="axes: one axis at a time "
                                                "from llama.cpp's defaults; grid: every combination"),
    breakdown: bool = typer.Option(False, "--breakdown", help="also profile every point per node (one more "
                                   "fresh process each): ms by category (projections, attention, DHSA "
                                   "scoring / selection, loop overhead, ...) in the table and the JSON"),
    breakdown_plot: Optional[str] = typer.Option(None, "--breakdown-plot", help="with --breakdown: write the "
                                                 "stacked-bar figure (PNG)"),
):
    """Latency, throughput and peak memory side by side, with ratios to the first model (any task).

    The models' metadata says their task: token models sweep --seq-lens, image models --image-sizes,
    every kind --batch-sizes; a policy is timed per step with its recurrent state fed back.
    """
    from edgekit.profiling import profile as run_profile

    _check_outputs(json_out, plot_out, breakdown_plot)
    if breakdown_plot and not breakdown:
        raise EdgekitError("--breakdown-plot draws the --breakdown figures: add --breakdown")
    gate = _gate_request(compare, fail_on)
    axes = dict(seq_lens=_int_list(seq_lens, "--seq-lens"), image_sizes=_int_list(image_sizes, "--image-sizes"),
                batch_sizes=_int_list(batch_sizes, "--batch-sizes"))
    sweep = _sweep_space(llamacpp_sweep, llamacpp_sweep_axis, llamacpp_sweep_strategy, threads)
    with _StepProgress(None) as step:
        results = run_profile(models, **axes, repeat=repeat, warmup=warmup, ep=ep, threads=threads,
                              timeout_s=timeout, memory_limit_mb=memory_limit_mb, on_step=step,
                              command=_command_line(), decode_tokens=decode_tokens, llamacpp_sweep=sweep,
                              sweep_at=llamacpp_sweep_at,
                              breakdown=breakdown)
    _emit(results, _profile_table(results), json_out, plot_out)
    if breakdown_plot:
        from edgekit import report

        report.plot_breakdown(results, breakdown_plot)
        err.print(f"breakdown figure: {breakdown_plot}")
    if gate is None:
        return 0
    from edgekit import gates

    comparison = gate(results)
    typer.echo("\n" + gates.markdown(comparison))
    return _gate_exit(comparison)


def _sweep_space(enabled: bool, axes: Optional[List[str]], strategy: str, threads: Optional[int]):
    """The llama.cpp sweep asked for, or None; its options without --llamacpp-sweep are an error."""
    from edgekit.llamacpp_sweep import space_from

    if not enabled:
        if axes or strategy != "axes":
            raise EdgekitError("--llamacpp-sweep-axis / --llamacpp-sweep-strategy need --llamacpp-sweep")
        return None
    return space_from(axes, strategy, threads)


def _command_line() -> str:
    """This run's command line, as a shell would take it back: the provenance of its results file."""
    import shlex

    return shlex.join(["edgekit", *sys.argv[1:]])


def _check_outputs(*paths: Optional[str]) -> None:
    """Fail on an output that cannot be written now, not after the slow work."""
    for path in paths:
        if path is not None:
            check_writable(path)


def _profile_table(results: dict) -> str:
    from edgekit import report

    return report.markdown(results)


def _emit(results: dict, table: str, json_out: Optional[str], plot_out: Optional[str] = None) -> None:
    """The table comes first: a result file that still fails to write cannot lose a finished sweep."""
    from edgekit import report

    typer.echo(table)
    if json_out:
        report.write_json(results, json_out)
        err.print(f"results: {json_out}")
    if plot_out:
        report.plot(results, plot_out)
        err.print(f"figure: {plot_out}")
    _fail_if_nothing_ran(results)


def _fail_if_nothing_ran(results: dict) -> None:
    """A sweep whose every point failed is an error, once its table and files are out."""
    if not any(r.get("status") == "ok" for r in results["results"]):
        raise EdgekitError("every point failed; the reasons are listed under the table")


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="ONNX model (edgekit export, or any ONNX file), or a model folder "
                                           "(export --with-decode: both graphs are quantized)"),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write (+ OUTPUT.data for external data); "
                                                            "a new folder for a model folder"),
    precision: str = typer.Option("int8", help="int8 (dynamic) | int8-static (QDQ, calibrated) | int8-block / int4 "
                                               "(weight-only, blockwise; int8-block at block 32 ~ llama.cpp Q8_0) "
                                               "| fp16 (for GPU providers)"),
    calibration: Optional[Path] = typer.Option(None, help="int8-static: .npz of arrays named like the model's "
                                                          "inputs (a leading axis stacks samples) [synthetic]"),
    block_size: int = typer.Option(32, help="int8-block / int4: weights per quantization block"),
    accuracy_level: int = typer.Option(4, help="int8-block / int4: MatMulNBits compute type (4: int8 on CPU, "
                                               "1: fp32)"),
    atol: Optional[float] = typer.Option(None, help="fail (write nothing) if an output differs by more [report only]"),
    min_top1: Optional[float] = typer.Option(None, help="fail (write nothing) below this top-1 agreement of the logits"),
    seed: int = typer.Option(0, help="seed of the check (and synthetic calibration) inputs"),
):
    """Quantize a model with ONNX Runtime's tools, keeping edgekit ops, and check it against the float model."""
    from edgekit.quantizing import quantize as run_quantize

    options = dict(calibration=calibration, block_size=block_size, accuracy_level=accuracy_level, atol=atol,
                   min_top1=min_top1, seed=seed)
    if model.is_dir():
        return _quantize_folder(model, output, precision, options)
    with err.status(f"quantizing {model} ({precision})"):
        r = run_quantize(model, output, precision, **options)
    _quantized_lines(r)


def _quantize_folder(model: Path, output: Path, precision: str, options: dict) -> None:
    from edgekit.folder_quantizing import quantize_folder
    from edgekit.model_folder import CHECK_STEPS

    with err.status(f"quantizing the model folder {model} ({precision})"):
        result = quantize_folder(model, output, precision, **options)
    typer.echo(f"wrote {result.path}/: prefill.onnx and decode.onnx at {precision}")
    for role, r in result.graphs.items():
        typer.echo(f"{role}:")
        _quantized_lines(r)
    typer.echo(f"greedy generation: the first {result.greedy_match} of {CHECK_STEPS} tokens equal the float folder's")


def _quantized_lines(r) -> None:
    data = " + .data" if r.external_data else ""
    typer.echo(f"wrote {r.path}{data} ({r.size_mb[1]:.2f} MB, {r.size_ratio:.2f}x of {r.size_mb[0]:.2f} MB; "
               f"weights {r.weights_mb[1]:.2f} MB, {r.weights_ratio:.2f}x): {r.settings.precision}")
    for line in r.notes:
        typer.echo(f"  {line}")
    if r.agreement:
        typer.echo(f"agreement with the float model: {r.agreement.describe()}")


@app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="ONNX model to optimize"),
    output: Path = typer.Option(..., "-o", "--output", help="optimized model to write (.onnx, or .ort with "
                                                             "--format ort)"),
    ep: Optional[str] = typer.Option(None, help="execution-provider profile: cpu | cuda | ... (profiles/<name>.toml) "
                                                "[cpu]"),
    profile_file: Optional[Path] = typer.Option(None, help="a profile .toml to use instead of a named one"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | ort (ORT format, for minimal / mobile builds)"),
    strict_ep: bool = typer.Option(False, "--strict-ep", help="no CPU fallback: fail, naming the nodes the "
                                                               "provider cannot run"),
):
    """Optimize a model ahead of time for one execution provider; report node placement and agreement."""
    from edgekit.compiling import compile_model

    with err.status(f"compiling {model}"):
        r = compile_model(model, output, ep, profile_file=profile_file, fmt=fmt, strict_ep=strict_ep)
    typer.echo(f"wrote {r.path} ({r.size_mb:.2f} MB, {r.format} format): optimized for {r.provider} "
               f"(profile {r.profile}, level {r.optimization_level})")
    typer.echo("placement (nodes run once on a check input, from ONNX Runtime's profile):")
    for line in r.placement.describe(r.provider) + r.notes:
        typer.echo(f"  {line}")
    typer.echo(f"agreement with the original: {r.agreement.describe()}")


@app.command("report")
def report_cmd(
    results: List[Path] = typer.Argument(..., help="JSON written by `edgekit profile --json`; several (devices, "
                                                   "commits) are compared side by side"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write the report here (format from the "
                                                                      "suffix: .html, .md, .json, .csv) [stdout]"),
    fmt: Optional[str] = typer.Option(None, "--format", help="html | md | json | csv [from -o, else md]"),
    passkey_files: List[Path] = typer.Option([], "--passkey", "--retrieval",
                                             help="`edgekit passkey --json` or `edgekit eval retrieval --json` "
                                                  "results for the accuracy-vs-speed chart (repeatable)"),
    compare: List[Path] = typer.Option([], help="baseline results to gate against, with --fail-on (repeatable: "
                                                "rows of every file count)"),
    fail_on: Optional[str] = typer.Option(None, help="e.g. latency:+10%,memory:+10%: exit 3 past a threshold, "
                                                     "4 when baseline rows are missing"),
    plot_out: Optional[str] = typer.Option(None, "--plot", help="write latency / memory figure (PNG)"),
):
    """Render saved profile results: Markdown on stdout, or one self-contained HTML / JSON / CSV file."""
    from edgekit import report, report_formats

    gate = _gate_request(compare, fail_on)
    fmt = report_formats.format_of(output, fmt)
    _check_outputs(plot_out, output)
    files = report_formats.load_files(results)
    passkey = [report_formats.load_passkey(str(p)) for p in passkey_files]
    comparison = gate({"results": [r for f in files for r in f["data"]["results"]]}) if gate else None
    if plot_out:
        report.plot(files[0]["data"], plot_out)
    text = report_formats.render(files, fmt, passkey=passkey, comparison=comparison)
    if output:
        _write_text(output, text)
        err.print(f"report: {output}")
    else:
        typer.echo(text, nl=False)
    return _gate_exit(comparison)


def _gate_request(compare, fail_on: Optional[str]):
    """Parse --fail-on and load the baseline(s) before any slow work; returns current -> Comparison, or None."""
    from edgekit import gates, report

    compare = [compare] if isinstance(compare, Path) else list(compare or [])
    if not compare and fail_on is None:
        return None
    if not compare or fail_on is None:
        raise EdgekitError("--compare and --fail-on go together (a baseline and the thresholds to judge it by)")
    thresholds = gates.parse_thresholds(fail_on)
    baseline = {"results": [r for path in compare for r in report.load_results(str(path))["results"]]}
    return lambda current: gates.compare(current, baseline, thresholds)


def _gate_exit(comparison) -> int:
    """Exit 3 (regression) or 4 (baseline rows missing), said on stderr; 0 without a gate."""
    if comparison is None or comparison.exit_code == 0:
        return 0
    why = "a result regressed past its threshold" if comparison.exit_code == 3 else "baseline rows are missing"
    _fail(f"Gate failed: {why} (exit {comparison.exit_code}); the summary is on stdout")
    return comparison.exit_code


def _write_text(path: str, text: str) -> None:
    from edgekit.files import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


@app.command()
def ops():
    """List the registered edgekit custom ops and their attributes."""
    from edgekit.runtime_ops import DOMAIN, all_ops

    for op in all_ops():
        outputs = ", ".join(f"{o.name}" + (f" ({str(o.dtype).split('.')[-1]})" if o.dtype else "")
                            for o in op.outputs)
        typer.echo(f"{DOMAIN}.{op.name} version {op.version}; inputs: {', '.join(op.inputs)} -> {outputs}")
        typer.echo(f"  {op.doc.strip().splitlines()[0]}")
        for a in op.attributes:
            bounds = "".join([f" >= {a.minimum}" if a.minimum is not None else "",
                              f" <= {a.maximum}" if a.maximum is not None else ""])
            typer.echo(f"  {a.name:<16} {a.type_name:<6} default {a.default!s:<6}{bounds:<12} {a.doc}")


@app.command()
def models():
    """List the model families by task, with their methods and presets, and the packaged real models."""
    from edgekit.exporters import families, tasks
    from edgekit.exporters.sources import PACKAGED

    for task in tasks():
        typer.echo(f"{task}:")
        for family in families(task):
            methods = ", ".join(m + (" (baseline)" if m == family.default_method else "") for m in family.methods)
            typer.echo(f"  {family.__name__} ({family.kind}): methods {methods}; "
                       f"presets {', '.join(family.presets) or '-'}; architectures {', '.join(family.architectures)}")
    for name, (dist, file, hint) in PACKAGED.items():
        typer.echo(f"{name}: real weights from {dist} ({file}); install: {hint}")


@app.command()
def providers():
    """List execution-provider profiles and whether this onnxruntime build can run them."""
    import onnxruntime as ort

    from edgekit.ep_profiles import available_profiles, load_profile

    available = ort.get_available_providers()
    for name in available_profiles():
        p = load_profile(name)
        status = "available" if p.provider in available else "not in this onnxruntime build"
        typer.echo(f"{name:<12} {p.provider:<24} {status}: {p.description}")


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("out/demo"), help="where models, JSON and figures go"),
    repeat: int = typer.Option(3, help="timed runs per point"),
):
    """The main job: every mechanism against its baseline on the same network, one table each (minutes)."""
    from edgekit import demo as showcases

    showcases.check_outputs(output_dir)
    for showcase, results, files in _demo_steps(showcases, output_dir, repeat):
        typer.echo(f"\n## {showcase.title}\n")
        _emit(results, _profile_table(results), str(files["json"]), str(files["plot"]))


def _demo_steps(showcases, output_dir: Path, repeat: int):
    status = err.status("starting")
    with status:
        steps = showcases.run(output_dir, repeat=repeat, on_export=status.update,
                              on_step=lambda label, done, total: status.update(f"profiling {label} "
                                                                               f"({done + 1}/{total})"))
        yield from steps


@app.command("passkey")
def passkey_cmd(
    models: List[str] = typer.Argument(..., help="ONNX files exported with --logits-to-keep 8 (SmolLM2 tokenizer)"),
    lengths: str = typer.Option("2048,4096,8192", help="comma-separated prompt lengths in tokens"),
    depths: str = typer.Option("0.1,0.5,0.9", help="comma-separated needle depths (0 = start, 1 = end)"),
    trials: int = typer.Option(1, help="prompts (random keys) per length and depth"),
    seed: int = typer.Option(0, help="seed of the random keys"),
    ep: str = typer.Option("cpu", help="execution-provider profile (profiles/<name>.toml)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: the profile's)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the full results as JSON"),
):
    """Passkey retrieval: is a 5-digit key hidden in filler text found at each length (greedy, teacher-forced)?"""
    from edgekit.passkey import markdown, passkey

    sizes = _values(lengths, int, "--lengths")
    fractions = _values(depths, float, "--depths")
    _check_outputs(json_out)
    with _StepProgress(len(models) * len(sizes) * len(fractions) * trials) as step:
        results = passkey(models, sizes, fractions, trials=trials, seed=seed, ep=ep, threads=threads,
                          on_step=step)
    _emit(results, markdown(results), json_out)


eval_app = typer.Typer(no_args_is_help=True, help="Long-context accuracy of exported LLMs: perplexity and "
                                                    "synthetic retrieval, dense vs DHSA (at several budgets).")
app.add_typer(eval_app, name="eval")
BUDGETS_HELP = ("DHSA models: comma-separated budget_tokens to evaluate each at, without re-exporting (dense "
                "models run once) (default: as exported)")


@eval_app.command("ppl")
def eval_ppl(
    models: List[str] = typer.Argument(..., help="ONNX files exported with --logits-to-keep 0 (every position)"),
    lengths: str = typer.Option("2048,8192", help="comma-separated window lengths in tokens"),
    text: Optional[str] = typer.Option(None, help="UTF-8 text file to score [Python's own documentation, "
                                                  "pydoc_data.topics from the standard library, ~465K characters]"),
    token_ids: Optional[str] = typer.Option(None, help="score these token ids instead (.npy, or integers in a text "
                                                       "file): models without a tokenizer"),
    windows: Optional[int] = typer.Option(None, help="windows per length, from the text's start (default: all "
                                                     "that fit)"),
    budgets: Optional[str] = typer.Option(None, help=BUDGETS_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="packaged model, .gguf or HF folder (default: the one "
                                                       "recorded at export)"),
    ep: str = typer.Option("cpu", help="execution-provider profile (profiles/<name>.toml)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: the profile's)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the full results as JSON"),
):
    """Perplexity over non-overlapping windows of a long real text (mean next-token loss, from ORT's logits)."""
    from edgekit.perplexity import markdown, perplexity

    _check_outputs(json_out)
    with _StepProgress(None) as step:
        results = perplexity(models, _values(lengths, int, "--lengths"), text=text, token_ids=token_ids,
                             windows_per_length=windows, budgets=_int_list(budgets, "--budgets"),
                             tokenizer=tokenizer, ep=ep, threads=threads, on_step=step)
    _emit_eval(results, markdown(results), json_out)


@eval_app.command("retrieval")
def eval_retrieval(
    models: List[str] = typer.Argument(..., help="ONNX files exported with --logits-to-keep 64 (or 0)"),
    tasks: str = typer.Option("passkey,multikey,multivalue,vartrack", help="comma-separated tasks: passkey, "
                              "multikey (one key among distractors), multivalue (every value of one key), "
                              "vartrack (variables of an assignment chain)"),
    lengths: str = typer.Option("4096,8192", help="comma-separated prompt lengths in tokens"),
    samples: int = typer.Option(5, help="prompts per task and length"),
    seed: int = typer.Option(0, help="seed of the generated prompts"),
    budgets: Optional[str] = typer.Option(None, help=BUDGETS_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="packaged model, .gguf or HF folder (default: the one "
                                                       "recorded at export)"),
    ep: str = typer.Option("cpu", help="execution-provider profile (profiles/<name>.toml)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: the profile's)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the full results as JSON (for `edgekit "
                                                                "report --retrieval`)"),
    plot_out: Optional[str] = typer.Option(None, "--plot", help="write accuracy vs budget per task (PNG)"),
):
    """Synthetic RULER-style retrieval, seeded: fully correct answers (and partial credit) per task and length."""
    from edgekit.retrieval import markdown, plot_budgets, retrieval

    _check_outputs(json_out, plot_out)
    with _StepProgress(None) as step:
        results = retrieval(models, [t.strip() for t in tasks.split(",") if t.strip()],
                            _values(lengths, int, "--lengths"), samples=samples, seed=seed,
                            budgets=_int_list(budgets, "--budgets"), tokenizer=tokenizer, ep=ep, threads=threads,
                            on_step=step)
    _emit_eval(results, markdown(results), json_out)
    if plot_out:
        plot_budgets(results, plot_out)
        err.print(f"figure: {plot_out}")


def _emit_eval(results: dict, table: str, json_out: Optional[str]) -> None:
    from edgekit import eval_results

    typer.echo(table)
    if json_out:
        eval_results.write(results, json_out)
        err.print(f"results: {json_out}")
    _fail_if_nothing_ran(results)


def _values(text: str, kind: type, flag: str) -> list:
    """'1,2' -> [kind(1), kind(2)]; anything else is one error naming the flag."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        words = {int: "integers", float: "numbers"}
        raise EdgekitError(f"{flag} wants comma-separated {words[kind]}, got '{text}'") from None


def _fail(line: str) -> None:
    """One unwrapped line on stderr (rich would wrap it to the terminal width)."""
    sys.stderr.write(" ".join(line.split()) + "\n")


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. It unwinds like KeyboardInterrupt (so `finally` removes temp files), but typer
    turns a KeyboardInterrupt into a silent exit 130, and this reaches main() to say "Aborted."."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM raise Interrupted while the CLI runs; the previous handlers come back after."""
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _show_warning(message, category, *args, **kwargs) -> None:
    """Library warnings (EdgekitWarning: valid but doubtful input) as one `Warning:` line each."""
    _fail(f"Warning: {message}")


def main() -> None:
    """Console entry point: map library errors to one line and an exit code."""
    import warnings

    from edgekit.errors import EdgekitWarning

    debug = bool(os.environ.get("EDGEKIT_DEBUG"))
    warnings.showwarning = _show_warning
    warnings.simplefilter("once", EdgekitWarning)
    try:
        with _signals_interrupt():  # bare `edgekit` is `edgekit --help`: help on stdout, exit 0
            code = app(args=sys.argv[1:] or ["--help"], prog_name="edgekit", standalone_mode=False)
    except EdgekitError as exc:
        if debug:
            raise
        _fail(f"Error: {exc}")
        sys.exit(1)
    except typer.TyperException as exc:  # typer vendors click: its usage errors derive from this, not click's
        if hasattr(exc, "show"):
            exc.show()
        else:
            _fail(f"Error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except (typer.Abort, Interrupted) as exc:
        _fail("Aborted.")
        sys.exit(128 + exc.signum if isinstance(exc, Interrupted) else 1)
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"Error: internal error ({type(exc).__name__}: {first}); rerun with EDGEKIT_DEBUG=1 for the traceback")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
