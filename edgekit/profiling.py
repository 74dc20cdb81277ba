"""`profile`: prefill latency and peak memory of several models side by side, one fresh process each."""

from __future__ import annotations

import datetime
import functools
import json
import platform
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Sequence

import psutil

from edgekit.ep_profiles import load_profile
from edgekit.errors import ModelLoadError, ProfileError, ShapeError
from edgekit.interface import TASK
from edgekit.profile_worker import row_base
from edgekit.report import SCHEMA_VERSION
from edgekit.tasks import describe, get_task

Progress = Callable[[str, int, int], None]  # (what runs now, how many are done, how many in all)


def profile(models: Sequence[str], seq_lens: Sequence[int] | None = None, *,
            image_sizes: Sequence[int] | None = None, batch_sizes: Sequence[int] | None = None,
            repeat: int = 3, warmup: int = 1, ep: str = "cpu", threads: int | None = None,
            timeout_s: float | None = None, memory_limit_mb: float | None = None,
            on_step: Progress | None = None, command: str | None = None,
            decode_tokens: int | None = None, llamacpp_sweep=None, sweep_at: int | None = None,
            breakdown: bool = False) -> dict:
    """Measure every (model, workload); the first model is the baseline the ratios refer to.

    `command` is the command line recorded as provenance (the CLI passes sys.argv); the API records
    the call itself.

    The models' task (from their metadata) says which axes apply: `seq_lens` for token models,
    `image_sizes` for image models, `batch_sizes` for every kind. A point that runs out of memory, fails
    or times out is recorded with its status; the sweep goes on. `decode_tokens` (model folders and .gguf
    files) times generation too: each run is the prompt, then that many new tokens (pp, tg and TTFT).

    `llamacpp_sweep` (a `SweepSpace`) tunes every .gguf model's llama.cpp settings and keeps the fastest
    per length (edgekit/llamacpp_sweep.py); with `sweep_at` it tunes once at that length and applies the
    winner to every length. Every trial is kept under the results' `llamacpp_sweeps`.

    `breakdown`: every timed ONNX point is profiled per node too, in one more fresh process (ORT's
    profiler slows the run, so the latency comes from the untouched one): `row["breakdown"]`.
    """
    models = check_request(models, ep, repeat=repeat, warmup=warmup, threads=threads, timeout=timeout_s,
                           memory_limit_mb=memory_limit_mb, decode_tokens=decode_tokens, sweep_at=sweep_at)
    task = get_task(common_task(models))
    workloads = task.workloads(seq_len=seq_lens, image_size=image_sizes, batch_size=batch_sizes)
    check_workloads(models, task, workloads)
    check_sweep(models, llamacpp_sweep, sweep_at, decode_tokens, workloads)
    measure = functools.partial(_measure_in_subprocess, repeat=repeat, warmup=warmup, ep=ep, threads=threads,
                                timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, decode_tokens=decode_tokens)
    steps = _Steps(on_step, _step_count(models, workloads, llamacpp_sweep, sweep_at))
    results, sweeps = _measure_all(models, workloads, measure, steps, llamacpp_sweep, sweep_at)
    if breakdown:
        _add_breakdowns(results, min(warmup, 1), ep, threads, timeout_s)
    results.sort(key=lambda r: models.index(r["model"]))  # stable: grouped by model, workloads in order
    for row in results:
        row.setdefault("task", task.name)
    add_ratios(results, baseline=models[0])
    settings = {"schema_version": SCHEMA_VERSION, "repeat": repeat, "warmup": warmup, "task": task.name,
                "workloads": workloads,
                "baseline": models[0], "decode_tokens": decode_tokens, "breakdown": breakdown,
                "memory": "RSS high-water mark above the loaded model, fresh process per model and workload"}
    if "seq_len" in task.axes:
        settings["seq_lens"] = sorted({w["seq_len"] for w in workloads})
    if llamacpp_sweep is not None:
        settings["llamacpp_sweep"] = {**llamacpp_sweep.describe(), "sweep_at": sweep_at}
    env = environment(ep, threads)
    env["command"] = command or _api_call(models, seq_lens, image_sizes, batch_sizes, repeat, warmup, ep, threads)
    report = {"results": results, "environment": env, "settings": settings}
    if sweeps:
        report["llamacpp_sweeps"] = sweeps
    return report


class _Steps:
    """Counts measurements (profile points and sweep trials alike) for the progress callback."""

    def __init__(self, on_step: Progress | None, total: int):
        self.on_step, self.total, self.done = on_step, total, 0

    def __call__(self, label: str) -> None:
        if self.on_step:
            self.on_step(label, self.done, self.total)
        self.done += 1


def _step_count(models, workloads, space, sweep_at) -> int:
    """How many worker processes the request starts: one per point, one per sweep trial."""
    ggufs = len(_ggufs(models)) if space is not None else 0
    plain = (len(models) - ggufs) * len(workloads)
    if not ggufs:
        return plain
    if sweep_at is None:
        return plain + ggufs * len(workloads) * space.trial_count()
    reused = sum(w == _sweep_workload(sweep_at) for w in workloads)
    return plain + ggufs * (space.trial_count() + len(workloads) - reused)


def _ggufs(models) -> list[str]:
    return [m for m in models if Path(m).suffix == ".gguf"]


def _sweep_workload(sweep_at: int) -> dict:
    return {"seq_len": sweep_at}


def _measure_all(models, workloads, measure, steps, space, sweep_at) -> tuple[list[dict], list[dict]]:
    """Every (workload, model) row, workload-major (models at one workload run close together in time);
    .gguf models through the llama.cpp sweep when one is asked for. Returns (rows, sweep records)."""
    tuned = {m: _tune(m, _sweep_workload(sweep_at), space, measure, steps)
             for m in _ggufs(models)} if space is not None and sweep_at else {}
    results, sweeps = [], list(tuned.values())
    for workload in workloads:
        for model in models:
            label = f"{Path(model).name} @ {describe(workload)}"
            if space is None or Path(model).suffix != ".gguf":
                steps(label)
                results.append(measure(model, workload))
            elif model in tuned:
                results.append(_apply(tuned[model], model, workload, measure, steps, label))
            else:
                record = _tune(model, workload, space, measure, steps)
                sweeps.append(record)
                results.append(_apply(record, model, workload, measure, steps, label))
    for record in sweeps:
        del record["rows"], record["winner"]
    return results, sweeps


def _tune(model, workload, space, measure, steps) -> dict:
    from edgekit.llamacpp_sweep import tune

    label = f"{Path(model).name} @ {describe(workload)}"
    record = tune(space, lambda s: measure(model, workload, llamacpp=s.model_dump()),
                  on_trial=lambda s: steps(f"tuning {label}: {s.label()}"))
    return {"model": model, "workload": workload, **record}


def _apply(record: dict, model, workload, measure, steps, label) -> dict:
    """The row of a .gguf at one workload with the sweep's winner: the winning trial itself at the length
    it was tuned at, a fresh measurement elsewhere, an error row when no setting ran."""
    base = row_base(model, workload)
    if record["chosen"] is None:
        errors = {t.get("error") for t in record["trials"]} - {None}
        return {**base, "method": "llama.cpp", "status": "error", "error": f"every llama.cpp setting failed when "
                f"tuning at {describe(record['workload'])} ({'; '.join(sorted(errors))[:200]})"}
    if workload == record["workload"]:
        row = record["rows"][record["winner"]]
    else:
        steps(f"{label}: {record['strategy']} winner")
        row = measure(model, workload, llamacpp=record["chosen"])
    row["llamacpp_sweep"] = {"tuned_at": record["workload"], "strategy": record["strategy"],
                             "trials": len(record["trials"]), "chosen": record["chosen"]}
    return row


def check_sweep(models, space, sweep_at, decode_tokens, workloads) -> None:
    """A sweep needs a .gguf to tune; it tunes prefill, so generation timing is a separate request."""
    if space is None:
        if sweep_at is not None:
            raise ProfileError("sweep_at (--llamacpp-sweep-at) needs a llama.cpp sweep (--llamacpp-sweep)")
        return
    if not _ggufs(models):
        raise ProfileError("--llamacpp-sweep tunes llama.cpp, but no model is a .gguf file or a packaged model name "
                           "(e.g. smollm2-135m)")
    if decode_tokens:
        raise ProfileError("--llamacpp-sweep tunes the prefill; time generation (--decode-tokens) in a separate run")
    if any("seq_len" not in w for w in workloads):
        raise ProfileError("--llamacpp-sweep tunes token models (--seq-lens)")


def _api_call(models, seq_lens, image_sizes, batch_sizes, repeat, warmup, ep, threads) -> str:
    """How the Python API was called, for a results file that did not come from the CLI."""
    args = dict(seq_lens=seq_lens, image_sizes=image_sizes, batch_sizes=batch_sizes, repeat=repeat,
                warmup=warmup, ep=ep, threads=threads)
    given = ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None)
    return f"edgekit.profile({list(models)!r}, {given})"


def check_workloads(models: Sequence[str], task, workloads: list[dict]) -> None:
    """Sizes a model cannot take (an image side that is no multiple of its stride) fail before the sweep."""
    from edgekit.interface import Interface

    for model in models:
        if Path(model).suffix == ".gguf":
            continue
        interface = Interface.from_metadata(_metadata(_graph_file(model)))
        for workload in workloads:
            try:
                interface.check_sizes(task.sizes(workload))
            except ShapeError as exc:
                raise ProfileError(f"{Path(model).name} cannot run {describe(workload)}: {exc}") from None


def _graph_file(model: str) -> str:
    """The file whose metadata describes a model: an edgekit model folder's prefill graph."""
    from edgekit.model_folder import PREFILL

    return str(Path(model) / PREFILL) if Path(model).is_dir() else model


def _metadata(path: str) -> dict[str, str]:
    """A model file's metadata, read once per request: the checks below all need it, and an .ort file is
    read through a whole ONNX Runtime session. Keyed by size and mtime, so a re-exported file is read anew."""
    stat = Path(path).stat()
    return _read_metadata(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_metadata(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    from edgekit.session import read_metadata

    return read_metadata(path)


def model_task(path: str) -> str:
    """The task an .onnx / .ort file declares (a .gguf is an LLM); a file edgekit did not export is an error."""
    if Path(path).suffix == ".gguf":
        return "text-generation"
    meta = _metadata(_graph_file(path))
    if TASK not in meta:
        raise ProfileError(f"{path} was not exported by edgekit (its metadata has no {TASK}): "
                           "export it with `edgekit export`")
    return meta[TASK]


def common_task(models: Sequence[str]) -> str:
    """Models profiled side by side must do the same task: the baseline's ratios need equal workloads."""
    tasks = {m: model_task(m) for m in models}
    if len(set(tasks.values())) > 1:
        listing = ", ".join(f"{Path(m).name}: {t}" for m, t in tasks.items())
        raise ProfileError(f"models of different tasks cannot be profiled side by side ({listing})")
    return next(iter(tasks.values()))


def _model_file(model: str) -> str:
    """A packaged real model's name (e.g. smollm2-135m) stands for its GGUF file: the llama.cpp baseline."""
    from edgekit.exporters.sources import PACKAGED, packaged_path

    return str(packaged_path(model)) if model in PACKAGED and not Path(model).exists() else model


def check_request(models, ep: str = "cpu", **settings) -> list[str]:
    """Validate a profile request before any work starts; returns the model files to run.

    `settings` are repeat, warmup, threads, timeout and memory_limit_mb (each checked by name).
    """
    models = [_model_file(m) for m in models]
    if not models:
        raise ProfileError("no models to profile")
    for model in models:
        _check_model_file(model, settings.get("decode_tokens"))
    check_settings(**settings)
    ep_profile = load_profile(ep)
    ep_profile.providers()  # unknown or unavailable provider
    for model in models:
        if Path(model).suffix != ".gguf":
            ep_profile.check_precision(model, _metadata(_graph_file(model)).get("edgekit.precision"))
    return models


# setting -> (holds, what it must be); None always passes (the default applies)
_SETTINGS = {"repeat": (lambda v: v >= 1, ">= 1"), "warmup": (lambda v: v >= 0, ">= 0"),
             "trials": (lambda v: v >= 1, ">= 1"), "threads": (lambda v: v >= 1, ">= 1"),
             "timeout": (lambda v: v > 0, "> 0"), "memory_limit_mb": (lambda v: v > 0, "> 0"),
             "decode_tokens": (lambda v: v >= 1, ">= 1"), "sweep_at": (lambda v: v >= 1, ">= 1")}


def check_settings(**settings) -> None:
    """A setting that cannot work fails by name before any run (threads=-3 would reach ONNX Runtime)."""
    for name, value in settings.items():
        holds, rule = _SETTINGS[name]
        if value is not None and not holds(value):
            raise ProfileError(f"{name} must be {rule}, got {value:g}")


def _check_model_file(model: str, decode_tokens: int | None = None) -> None:
    """Only files a runner can load pass: an .onnx / .ort (compiled) exported by edgekit, an edgekit model
    folder, or a .gguf when llama.cpp is here; generation (`decode_tokens`) needs a folder or a .gguf."""
    from edgekit.model_folder import read_manifest

    suffix = Path(model).suffix
    if Path(model).is_dir():
        read_manifest(model)
        return
    if decode_tokens and suffix != ".gguf":
        raise ProfileError(f"--decode-tokens times generation, which needs a model folder (`edgekit export "
                           f"--with-decode`) or a .gguf; {model} is a single graph")
    if not Path(model).is_file():
        raise ProfileError(f"model file not found: {model}")
    if suffix in (".onnx", ".ort"):
        _check_onnx_file(model)
    elif suffix != ".gguf":
        raise ProfileError(f"cannot profile {model}: expected an .onnx / .ort (ONNX Runtime) or .gguf (llama.cpp) "
                           "file")
    elif find_spec("llama_cpp") is None:
        from edgekit.llamacpp import INSTALL_HINT

        raise ProfileError(f"{model} runs in llama.cpp, but llama-cpp-python is not installed: "
                           f"{INSTALL_HINT}")


def _check_onnx_file(path: str) -> None:
    """A file that is no edgekit ONNX model fails the request, not every point of the sweep one by one."""
    if not set(_metadata(path)) & {"edgekit.method", "edgekit.task"}:
        raise ModelLoadError(f"{path} was not exported by edgekit (no edgekit.method metadata): "
                             f"export it with `edgekit export`")


def _measure_in_subprocess(model, workload, repeat, warmup, ep, threads, timeout_s, memory_limit_mb,
                           decode_tokens=None, llamacpp: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "edgekit.profile_worker", model, json.dumps(workload), "--repeat", str(repeat),
           "--warmup", str(warmup), "--ep", ep, "--decode-tokens", str(decode_tokens or 0)]
    if llamacpp is not None:
        cmd += ["--llamacpp", json.dumps(llamacpp)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if memory_limit_mb is not None:
        cmd += ["--memory-limit-mb", str(memory_limit_mb)]
    base = row_base(model, workload)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "error": f"took longer than {timeout_s:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    if proc.returncode in (-9, 137):  # killed by the kernel's OOM killer
        return {**base, "status": "oom", "error": "killed by the operating system (out of memory)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**base, "status": "error", "error": f"worker exited with {proc.returncode}: {tail[:300]}"}


def _add_breakdowns(rows: list[dict], warmup: int, ep: str, threads: int | None, timeout_s: float | None) -> None:
    """`profile --breakdown`: each measured ONNX point once more under ORT's per-node profiler."""
    for row in rows:
        if row["status"] == "ok" and Path(row["model"]).suffix != ".gguf":
            row["breakdown"] = _breakdown_in_subprocess(row["model"], row["workload"], warmup, ep, threads, timeout_s)


def _breakdown_in_subprocess(model: str, workload: dict, warmup: int, ep: str, threads: int | None,
                             timeout_s: float | None) -> dict:
    """edgekit.breakdown in a fresh process (`warmup` runs, then one profiled run: a long prompt is costly);
    a failure is recorded in the breakdown, the point keeps its timing."""
    cmd = [sys.executable, "-m", "edgekit.breakdown", model, json.dumps(workload), "--ep", ep, "--runs", "1",
           "--warmup", str(warmup)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s and 3 * timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"took longer than {3 * timeout_s:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"breakdown worker exited with {proc.returncode}: {tail[:300]}"}


def add_ratios(results: list[dict], baseline: str) -> None:
    """speedup = baseline median / median; memory_ratio = peak / baseline peak (same length)."""
    key = lambda r: json.dumps(r["workload"], sort_keys=True)  # noqa: E731
    base = {key(r): r for r in results if r["model"] == baseline and r["status"] == "ok"}
    for r in results:
        ref = base.get(key(r))
        if r["status"] != "ok" or ref is None:
            r["speedup_vs_baseline"] = r["memory_ratio_vs_baseline"] = None
            continue
        r["speedup_vs_baseline"] = ref["latency_ms"]["median"] / r["latency_ms"]["median"]
        r["memory_ratio_vs_baseline"] = r["peak_rss_mb"] / ref["peak_rss_mb"] if ref["peak_rss_mb"] > 0 else None


def environment(ep: str, threads: int | None) -> dict:
    """Everything a reader needs to reproduce or compare a result."""
    versions = {}
    for dist in ("edgekit", "onnxruntime", "onnx", "onnxscript", "torch", "transformers", "numpy",
                 "llama_cpp_python"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    profile = load_profile(ep)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "execution_provider": {"profile": profile.name, "provider": profile.provider,
                               "session": dict(profile.session), "provider_options": dict(profile.provider_options),
                               "threads": threads},
        "versions": versions,
        "git_commit": git_commit(),
        "gpu": gpu_name() if profile.provider == "CUDAExecutionProvider" else None,
    }


def git_commit() -> str | None:
    """The commit of the edgekit source tree when it is a git checkout (an installed wheel has none)."""
    source = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def gpu_name() -> str | None:
    """The first GPU's model from NVML, when nvidia-ml-py is installed and a driver answers."""
    from edgekit.gpu_memory import device_name

    return device_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
