"""Where an exported model's time goes: ONNX Runtime's per-node kernel times, summed by op type.

    python benchmarks/node_breakdown.py MODEL.onnx '{"image_size": 896}' [--runs 3] [--threads 2]

Inputs come from the model's own interface (edgekit metadata), at the given workload. Function bodies
are inlined by ONNX Runtime, so an edgekit op shows as the standard ops of its body.
"""

from __future__ import annotations

import argparse
import collections
import json

import onnxruntime as ort

from edgekit.interface import Interface
from edgekit.tasks import get_task


def breakdown(path: str, workload: dict, runs: int = 3, threads: int = 2) -> dict[str, float]:
    """Milliseconds per run by op type, largest first."""
    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, threads
    options.profile_file_prefix = "/tmp/edgekit-breakdown"
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    interface = Interface.from_metadata(session.get_modelmeta().custom_metadata_map)
    feeds = interface.example_inputs(get_task(interface.task).sizes(workload))
    for _ in range(runs + 1):  # the first run warms up; its events are dropped below by count
        session.run(None, feeds)
    events = [e for e in json.load(open(session.end_profiling()))
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_op = collections.Counter()
    for event in events[len(events) // (runs + 1):]:
        per_op[event["args"].get("op_name", "?")] += event["dur"] / 1000 / runs
    return dict(per_op.most_common())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("workload", type=json.loads)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    times = breakdown(args.model, args.workload, args.runs, args.threads)
    total = sum(times.values())
    print(f"| op type | ms per run | share |\n|---|---:|---:|")
    for op_type, ms in list(times.items())[:10]:
        print(f"| {op_type} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print(f"| all kernels | {total:.1f} | 100% |")


if __name__ == "__main__":
    main()
