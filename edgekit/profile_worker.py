"""One profiling measurement in a fresh process: `python -m edgekit.profile_worker MODEL WORKLOAD ...`.

WORKLOAD is a JSON object such as '{"seq_len": 4096}' or '{"image_size": 448, "batch_size": 64}'.

A fresh process per (model, length) makes the RSS high-water mark belong to that run alone. Prints one
JSON object on stdout. A watchdog thread stops the process before it exhausts the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time

import numpy as np
import psutil

OOM_EXIT = 3


def _watchdog(limit_bytes: int, base: dict) -> None:
    proc = psutil.Process()
    while True:
        if proc.memory_info().rss > limit_bytes:
            print(json.dumps({**base, "status": "oom",
                              "error": f"RSS passed the {limit_bytes / 1e6:.0f} MB limit"}), flush=True)
            os._exit(OOM_EXIT)
        time.sleep(0.01)


def row_base(model: str, workload: dict) -> dict:
    """The fields every result row has, whatever its status (seq_len kept for token workloads)."""
    base = {"model": model, "workload": workload}
    if "seq_len" in workload:
        base["seq_len"] = workload["seq_len"]
    return base


def _reset_peak_rss() -> bool:
    """Restart the kernel's RSS high-water mark (Linux), so loading the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; includes loading


def _gpu_peak(ep: str):
    """A device-memory sampler for CUDA profiles (host RSS is no GPU figure); nothing for the others."""
    import contextlib

    from edgekit.ep_profiles import load_profile
    from edgekit.gpu_memory import GpuPeak

    profile = load_profile(ep)
    if profile.provider != "CUDAExecutionProvider":
        return contextlib.nullcontext()
    return GpuPeak(int(profile.provider_options.get("device_id", 0)))


def measure(model: str, workload: dict, repeat: int, warmup: int, ep: str, threads: int | None,
            seed: int, decode_tokens: int = 0, llamacpp: dict | None = None) -> dict:
    from edgekit.runners import runner_for

    settings = None
    if llamacpp is not None:
        from edgekit.llamacpp import LlamaCppSettings

        settings = LlamaCppSettings.model_validate(llamacpp)
    runner = runner_for(model, ep=ep, threads=threads, context=workload.get("seq_len", 0),
                        decode_tokens=decode_tokens, llamacpp=settings)
    loaded = psutil.Process().memory_info().rss
    exact_peak = _reset_peak_rss()
    feeds = runner.feeds(workload, seed)
    with _gpu_peak(ep) as gpu:
        for _ in range(warmup):
            feeds = runner.step(feeds)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            feeds = runner.step(feeds)
            times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    items_per_s = runner.task.items(workload) / (median / 1000)
    row = {
        **row_base(model, workload),
        "task": runner.task.name,
        "method": runner.method,
        "status": "ok",
        "latency_ms": {"median": median, "p90": float(np.percentile(times, 90)), "min": min(times), "runs": times},
        "peak_rss_mb": (_peak_rss_bytes() - loaded) / 1e6,
        "loaded_rss_mb": loaded / 1e6,
        "peak_source": "VmHWM reset after loading" if exact_peak else "ru_maxrss (includes loading)",
        "throughput": {"value": items_per_s, "unit": runner.task.unit},
        "runner": runner.describe(),
        **(gpu.fields() if gpu else {}),
    }
    if runner.task.unit == "tokens/s":
        row["tokens_per_s"] = items_per_s
    if decode_tokens:  # latency is then the whole generation: prompt + decode_tokens new tokens
        row.update(runner.figures(repeat))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("workload", type=json.loads)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ep", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-mb", type=float, default=None)
    parser.add_argument("--decode-tokens", type=int, default=0)
    parser.add_argument("--llamacpp", type=json.loads, default=None, help="LlamaCppSettings as JSON (.gguf)")
    args = parser.parse_args(argv)
    limit = args.memory_limit_mb * 1e6 if args.memory_limit_mb else psutil.virtual_memory().total * 0.9
    base = row_base(args.model, args.workload)
    threading.Thread(target=_watchdog, args=(int(limit), base), daemon=True).start()
    from edgekit.errors import EdgekitError

    try:
        result = measure(args.model, args.workload, args.repeat, args.warmup, args.ep, args.threads, args.seed,
                         args.decode_tokens, args.llamacpp)
    except MemoryError:
        result = {**base, "status": "oom", "error": "MemoryError"}
    except EdgekitError as exc:
        result = {**base, "status": "error", "error": str(exc)}
    except Exception as exc:  # a failed point is recorded and the sweep goes on
        text = str(exc).strip().splitlines()
        status = "oom" if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc) else "error"
        result = {**base, "status": status, "error": (text[0] if text else type(exc).__name__)[:300]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
