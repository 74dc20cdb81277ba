"""One attention layer, four mechanisms, side by side in ONNX Runtime CPU: images/s at each batch size.

    python benchmarks/hilo_layer.py --batch 1,64 --repeat 5 --json hilo_layer.json

Each layer is LITv2's stage-3 attention at 224x224 input (14x14 tokens, dim 768, 12 heads) with its
projections, taken from `edgekit.exporters.vision.litv2` and exported with torch's dynamo exporter
(opset 23, symbolic batch):
  hilo    edgekit::HiLoAttention, alpha 0.9 (10 Lo-Fi + 2 Hi-Fi heads), window 2;
  msa     plain multi-head self-attention (torch SDPA -> ONNX Attention);
  window  2x2 local window attention only (the HiLo op with alpha 0);
  sra     PVT's spatial-reduction attention, ratio 2 (strided conv + LayerNorm for keys/values).
Sessions: CPU execution provider, 2 intra-op threads, every graph optimization on, thread spinning off
(four live sessions; spinning idle ones took the cores and made whichever ran next look 3-5x slower). Within each repeat
the methods run in turn (interleaved), so drift in machine load hits them alike; the figure is
batch / median seconds. Markdown on stdout, progress on stderr, JSON (with the environment) to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgekit import profiling
from edgekit.exporters.vision.litv2 import MSA, SRA, HiLo
from edgekit.runtime_ops.attach import attach_functions

TOKENS, DIM, HEADS = 14, 768, 12
LAYERS = {
    "hilo": lambda: HiLo(DIM, HEADS, alpha=0.9, window=2),
    "msa": lambda: MSA(DIM, HEADS),
    "window": lambda: HiLo(DIM, HEADS, alpha=0.0, window=2),
    "sra": lambda: SRA(DIM, HEADS, ratio=2),
}


def export(layer: torch.nn.Module) -> onnx.ModelProto:
    """(B, 14, 14, 768) -> (B, 14, 14, 768) with a symbolic batch, edgekit bodies attached."""
    x = torch.randn(2, TOKENS, TOKENS, DIM)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(layer.eval(), (x,), input_names=["x"], output_names=["y"], dynamo=True,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                    opset_version=23, verbose=False)
    return attach_functions(program.model_proto)


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle sessions' spinning threads would steal the cores of the one being timed
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(sessions: dict, batches: list[int], repeat: int) -> dict:
    """{method: {batch: [seconds per run]}}; one warm-up each, then methods interleaved per repeat."""
    times = {m: {b: [] for b in batches} for m in sessions}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, TOKENS, TOKENS, DIM), dtype=np.float32)
        for s in sessions.values():
            s.run(None, {"x": x})
        for r in range(repeat):
            for method, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"x": x})
                times[method][b].append(time.perf_counter() - start)
            print(f"batch {b}: repeat {r + 1}/{repeat}", file=sys.stderr)
    return times


def markdown(results: dict, batches: list[int]) -> str:
    """Images/s per method and batch, and each method's speed-up over MSA."""
    head = "| method | " + " | ".join(f"batch {b} img/s | vs msa" for b in batches) + " |"
    lines = [head, "|---" * (1 + 2 * len(batches)) + "|"]
    for method, per_batch in results.items():
        cells = [f"{per_batch[str(b)]['images_per_s']:.1f} | "
                 f"{per_batch[str(b)]['images_per_s'] / results['msa'][str(b)]['images_per_s']:.2f}x"
                 for b in batches]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(threads: int) -> dict:
    """edgekit's profile environment (versions, CPU, cores) plus this benchmark's session and layer."""
    return dict(profiling.environment("cpu", threads), graph_optimization="ORT_ENABLE_ALL", allow_spinning=0,
                layer=dict(tokens=f"{TOKENS}x{TOKENS}", dim=DIM, heads=HEADS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write results and environment here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    torch.manual_seed(0)
    sessions = {}
    for method, build in LAYERS.items():
        print(f"exporting {method}", file=sys.stderr)
        sessions[method] = session(export(build()), args.threads)
    times = measure(sessions, batches, args.repeat)
    results = {m: {str(b): dict(median_s=statistics.median(t), images_per_s=b / statistics.median(t), runs_s=t)
                   for b, t in per_batch.items()} for m, per_batch in times.items()}
    print(markdown(results, batches))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(args.threads), results=results), f, indent=2)


if __name__ == "__main__":
    main()
