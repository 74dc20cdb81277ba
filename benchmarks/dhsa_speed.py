"""DHSA prefill speed against the machine's sgemm rate: the FLOPs DHSA must do, a measured sgemm rate, targets.

    python benchmarks/dhsa_speed.py probe --model smollm2-135m --threads 2 --json sgemm.json
    python benchmarks/dhsa_speed.py summary --probe sgemm.json --dhsa dhsa.onnx PROFILE.json [PROFILE.json ...]

`probe` measures the sgemm rate two ways: torch's 4096^3 fp32 matmul, and ONNX Runtime's MatMul at the
model's own projection shapes (4096 tokens x hidden @ hidden x out); and ONNX Runtime's `Attention` at the
shapes of one DHSA Loop step (causal, and unmasked as a bound). `summary` takes `edgekit profile
--json` files (dense and DHSA rows), counts the FLOPs each DHSA point must do (`dhsa_flops`, from the
model's config and the op's options in the DHSA file's metadata), and prints the achieved rate, its share
of the sgemm rate and the targets: 16K at >= 60% of the sgemm rate, time(32K) / time(16K) <= 2.3, DHSA no
slower than dense at any length where dense ran. It also gives the floor ORT's kernels set: the time with
every projection at ORT's MatMul rate, the kept attention at ORT's `Attention` rate and everything else free.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

TARGETS = {"share_16k": 0.60, "ratio_32k_16k": 2.3}


def model_shape(model: str) -> dict:
    """Hidden size, heads, head size, MLP size and layers of an edgekit model source (preset, packaged name)."""
    from edgekit.exporters.sources import load

    config = load(model)[1].config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"hidden": config.hidden_size, "q_heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "head_dim": head, "mlp": config.intermediate_size,
            "layers": config.num_hidden_layers}


def projection_shapes(shape: dict) -> dict[str, tuple[int, int, int]]:
    """Each layer's projection weights as {name: (in, out, how many)}: q and o, k and v, gate and up, down."""
    h, hd = shape["hidden"], shape["head_dim"]
    return {"q/o": (h, shape["q_heads"] * hd, 2), "k/v": (h, shape["kv_heads"] * hd, 2),
            "gate/up": (h, shape["mlp"], 2), "down": (shape["mlp"], h, 1)}


def projection_flops(shape: dict, seq_len: int) -> float:
    """q, k, v, o and the gated MLP (gate, up, down) of every layer, 2 FLOPs per multiply-add; the
    last-token LM head is left out (a few MFLOPs)."""
    per_token = sum(2 * k * n * count for k, n, count in projection_shapes(shape).values())
    return per_token * seq_len * shape["layers"]


def attention_flops(shape: dict, seq_len: int, budget: int | None) -> float:
    """QK^T and PV over the keys each query must see: the causal prefix, at most `budget` keys for DHSA
    (None: dense). A query at position p sees min(p + 1, budget) keys; 4 * head_dim FLOPs per key and head."""
    p = np.arange(seq_len, dtype=np.float64) + 1
    keys = np.minimum(p, budget).sum() if budget else p.sum()
    return float(4 * shape["head_dim"] * shape["q_heads"] * keys * shape["layers"])


def scoring_flops(shape: dict, seq_len: int, options: dict) -> float:
    """DHSA's chunk scores: the bound is one (2 * head_dim) x chunks product per query and query head, the
    mean one head_dim x chunks product per block and KV head (chunk_score 0: mean, 1: bound, 2: both)."""
    chunks = -(-seq_len // options["chunk_size"])
    blocks = -(-seq_len // options["block_size"])
    bound = 2 * 2 * shape["head_dim"] * chunks * seq_len * shape["q_heads"]
    mean = 2 * shape["head_dim"] * chunks * blocks * shape["kv_heads"]
    return {0: mean, 1: bound, 2: bound + mean}[options["chunk_score"]] * shape["layers"]


def dhsa_flops(shape: dict, seq_len: int, options: dict) -> dict:
    """The FLOPs a DHSA prefill must do; within the budget it is dense attention (no scoring)."""
    sparse = seq_len > options["budget_tokens"]
    parts = {"projections": projection_flops(shape, seq_len),
             "attention": attention_flops(shape, seq_len, options["budget_tokens"]),
             "scoring": scoring_flops(shape, seq_len, options) if sparse else 0.0}
    return {**parts, "total": sum(parts.values())}


def torch_sgemm_rate(threads: int, n: int = 4096, repeat: int = 3) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def ort_matmul_rate(k: int, n: int, threads: int, rows: int = 4096, repeat: int = 3) -> float:
    """GFLOP/s of one ONNX Runtime MatMul (rows x k) @ (k x n) with the weight as an initializer."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [rows, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    return 2 * rows * k * n / _best_seconds(model, {"x": x}, threads, repeat) / 1e9


def ort_attention_rate(shape: dict, threads: int, causal: bool = True, block: int = 128, budget: int = 2048,
                       queries: int = 4096, repeat: int = 3) -> float:
    """GFLOP/s of ONNX Runtime's `Attention` at the shapes of one DHSA Loop step: every block of `block` queries
    (the KV head's group of query heads) over its `budget - block` kept earlier keys, passed as past key/value,
    and its own keys, causal as in the body. `causal=False` is the same work unmasked: a bound, not DHSA."""
    import onnx
    from onnx import helper

    n, group, dim = queries // block * shape["kv_heads"], shape["q_heads"] // shape["kv_heads"], shape["head_dim"]
    past = budget - block
    rng = np.random.default_rng(0)
    sizes = {"q": (n, group, block, dim), "k": (n, 1, block, dim), "v": (n, 1, block, dim), "pk": (n, 1, past, dim),
             "pv": (n, 1, past, dim)}
    feeds = {name: rng.standard_normal(size, dtype=np.float32) / dim**0.5 for name, size in sizes.items()}
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "present_k", "present_v"],
                            is_causal=int(causal), scale=1.0)
    graph = helper.make_graph([node], "attention",
                              [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in sizes.items()],
                              [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, None)
                               for k in ("y", "present_k", "present_v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return 4 * n * group * block * budget * dim / _best_seconds(model, feeds, threads, repeat) / 1e9


def _best_seconds(model, feeds: dict, threads: int, repeat: int) -> float:
    """The fastest of `repeat` runs of a one-node model on ORT's CPU provider, after one warm-up run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    return min(_timed(lambda: session.run(None, feeds)) for _ in range(repeat))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def probe(model: str, threads: int) -> dict:
    shape = model_shape(model)
    ort_rates = {name: ort_matmul_rate(k, n, threads) for name, (k, n, _) in projection_shapes(shape).items()}
    return {"threads": threads, "model": model, "shape": shape, "torch_sgemm_4096_gflops": torch_sgemm_rate(threads),
            "ort_matmul_gflops": ort_rates,
            "ort_attention_gflops": {"kept_causal": ort_attention_rate(shape, threads),
                                     "kept_unmasked": ort_attention_rate(shape, threads, causal=False)}}


def kernel_floor_seconds(probe_result: dict, seq_len: int, budget: int) -> float | None:
    """The least time ONNX Runtime's own kernels allow at this length: every projection at ORT's MatMul rate for
    its shape, the kept attention at ORT's `Attention` rate at DHSA's step shapes, and everything else (chunk
    scoring, selection, norms, RoPE) free. None for a probe without the attention rate."""
    if "ort_attention_gflops" not in probe_result:
        return None
    shape, rates = probe_result["shape"], probe_result["ort_matmul_gflops"]
    tokens = seq_len * shape["layers"]
    seconds = sum(2 * k * n * count * tokens / (rates[name] * 1e9)
                  for name, (k, n, count) in projection_shapes(shape).items())
    return seconds + attention_flops(shape, seq_len, budget) / (probe_result["ort_attention_gflops"]["kept_causal"] * 1e9)


def dhsa_options(path: str) -> dict:
    from edgekit.session import read_metadata

    return json.loads(read_metadata(path)["edgekit.options"])


def summary(probe_result: dict, dhsa_path: str, profiles: list[str]) -> dict:
    """Per DHSA point: FLOPs, GFLOP/s, share of the sgemm rate, speed-up vs dense; then the targets."""
    shape, options = probe_result["shape"], dhsa_options(dhsa_path)
    rate = probe_result["torch_sgemm_4096_gflops"]
    rows = [r for path in profiles for r in json.load(open(path))["results"]]
    dense = {r["seq_len"]: r["latency_ms"]["median"] / 1000 for r in rows
             if r.get("method") == "dense" and r["status"] == "ok"}
    points = {}
    for r in rows:
        if r.get("method") != "dhsa" or r["status"] != "ok":
            continue
        s, seconds = r["seq_len"], r["latency_ms"]["median"] / 1000
        flops = dhsa_flops(shape, s, options)
        achieved = flops["total"] / seconds / 1e9
        floor = kernel_floor_seconds(probe_result, s, options["budget_tokens"])
        points[s] = {"seconds": seconds, "tflop": flops["total"] / 1e12, "gflops": achieved,
                     "share_of_sgemm": achieved / rate, "kernel_floor_seconds": floor,
                     "ceiling_share_of_sgemm": flops["total"] / floor / 1e9 / rate if floor else None,
                     "dense_seconds": dense.get(s),
                     "speedup_vs_dense": dense[s] / seconds if s in dense else None,
                     "peak_rss_mb": r["peak_rss_mb"]}
    return {"sgemm_gflops": rate, "options": options, "points": points, "targets": _targets(points)}


def _targets(points: dict) -> dict:
    share = points.get(16384, {}).get("share_of_sgemm")
    ratio = points[32768]["seconds"] / points[16384]["seconds"] if {16384, 32768} <= set(points) else None
    slower = [s for s, p in points.items() if p["speedup_vs_dense"] is not None and p["speedup_vs_dense"] < 1.0]
    return {"share_16k": {"value": share, "target": f">= {TARGETS['share_16k']:.0%}",
                          "met": share is not None and share >= TARGETS["share_16k"]},
            "ratio_32k_16k": {"value": ratio, "target": f"<= {TARGETS['ratio_32k_16k']}",
                              "met": ratio is not None and ratio <= TARGETS["ratio_32k_16k"]},
            "dhsa_not_slower_than_dense": {"value": sorted(slower), "target": "no length", "met": not slower}}


def markdown(result: dict) -> str:
    lines = [f"sgemm rate (torch 4096^3, measured): {result['sgemm_gflops']:.0f} GFLOP/s", "",
             "| tokens | DHSA s | TFLOP to do | GFLOP/s | % of sgemm | ORT kernels' floor s (% of sgemm) | dense s | "
             "speedup vs dense | peak MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, p in sorted(result["points"].items()):
        dense = f"{p['dense_seconds']:.1f}" if p["dense_seconds"] else "—"
        speedup = f"{p['speedup_vs_dense']:.2f}x" if p["speedup_vs_dense"] else "—"
        floor = (f"{p['kernel_floor_seconds']:.1f} ({100 * p['ceiling_share_of_sgemm']:.0f}%)"
                 if p.get("kernel_floor_seconds") else "—")
        lines.append(f"| {s} | {p['seconds']:.1f} | {p['tflop']:.2f} | {p['gflops']:.0f} | "
                     f"{100 * p['share_of_sgemm']:.0f}% | {floor} | {dense} | {speedup} | {p['peak_rss_mb']:.0f} |")
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---|---|"]
    for name, t in result["targets"].items():
        value = t["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True)
    s = sub.add_parser("summary")
    s.add_argument("profiles", nargs="+")
    s.add_argument("--probe", required=True)
    s.add_argument("--dhsa", required=True, help="the DHSA .onnx profiled (its options are in its metadata)")
    s.add_argument("--json")
    args = parser.parse_args()
    if args.command == "probe":
        result = probe(args.model, args.threads)
        open(args.json, "w").write(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    result = summary(json.load(open(args.probe)), args.dhsa, args.profiles)
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
