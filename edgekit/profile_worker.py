"""One profiling measurement in a fresh process: `python -m edgekit.profile_worker MODEL SEQ_LEN ...`.

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


def _watchdog(limit_bytes: int, model: str, seq_len: int) -> None:
    proc = psutil.Process()
    while True:
        if proc.memory_info().rss > limit_bytes:
            print(json.dumps({"model": model, "seq_len": seq_len, "status": "oom",
                              "error": f"RSS passed the {limit_bytes / 1e6:.0f} MB limit"}), flush=True)
            os._exit(OOM_EXIT)
        time.sleep(0.01)


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


def measure(model: str, seq_len: int, repeat: int, warmup: int, ep: str, threads: int | None,
            seed: int) -> dict:
    from edgekit.runners import runner_for

    runner = runner_for(model, ep=ep, threads=threads, context=seq_len)
    loaded = psutil.Process().memory_info().rss
    exact_peak = _reset_peak_rss()
    tokens = np.random.default_rng(seed).integers(0, runner.vocab_size, size=seq_len, dtype=np.int64)
    for _ in range(warmup):
        runner.prefill(tokens)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        runner.prefill(tokens)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "model": model,
        "method": runner.method,
        "seq_len": seq_len,
        "status": "ok",
        "latency_ms": {"median": statistics.median(times), "p90": float(np.percentile(times, 90)),
                       "min": min(times), "runs": times},
        "peak_rss_mb": (_peak_rss_bytes() - loaded) / 1e6,
        "loaded_rss_mb": loaded / 1e6,
        "peak_source": "VmHWM reset after loading" if exact_peak else "ru_maxrss (includes loading)",
        "tokens_per_s": seq_len / (statistics.median(times) / 1000),
        "runner": runner.describe(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("seq_len", type=int)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ep", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-mb", type=float, default=None)
    args = parser.parse_args(argv)
    limit = args.memory_limit_mb * 1e6 if args.memory_limit_mb else psutil.virtual_memory().total * 0.9
    threading.Thread(target=_watchdog, args=(int(limit), args.model, args.seq_len), daemon=True).start()
    from edgekit.errors import EdgekitError

    try:
        result = measure(args.model, args.seq_len, args.repeat, args.warmup, args.ep, args.threads, args.seed)
    except MemoryError:
        result = {"model": args.model, "seq_len": args.seq_len, "status": "oom", "error": "MemoryError"}
    except EdgekitError as exc:
        result = {"model": args.model, "seq_len": args.seq_len, "status": "error", "error": str(exc)}
    except Exception as exc:  # a failed length is recorded and the sweep goes on
        text = str(exc).strip().splitlines()
        status = "oom" if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc) else "error"
        result = {"model": args.model, "seq_len": args.seq_len, "status": status,
                  "error": (text[0] if text else type(exc).__name__)[:300]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
