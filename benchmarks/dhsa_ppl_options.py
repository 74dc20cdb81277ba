"""Perplexity of one DHSA export under other op options, without re-exporting: which option buys accuracy.

    edgekit export smollm2-135m --method dhsa --logits-to-keep 0 -o dhsa-all.onnx
    python benchmarks/dhsa_ppl_options.py dhsa-all.onnx --length 8192 --json dhsa-ppl-options.json \
        local_tokens=512 local_tokens=1024 chunk_score=0 chunk_score=1 block_size=64 budget_tokens=4096

Each `name=value` (or `a=1,b=2`) is one variant: the attributes of every `edgekit::DHSAAttention` node are
overridden in the loaded proto, as `edgekit eval ppl --budgets` does for the budget, and the first window of
`length` tokens of the default text (`edgekit eval ppl`'s) is scored. The export's own options run first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx

from edgekit.exporting import with_op_attributes
from edgekit.perplexity import perplexity


def variant(spec: str) -> dict[str, int]:
    return {name: int(value) for name, value in (pair.split("=") for pair in spec.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a DHSA export with --logits-to-keep 0")
    parser.add_argument("variants", nargs="*", help="name=value[,name=value]: one variant each")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--json", help="write every variant's result")
    args = parser.parse_intermixed_args()
    base = onnx.load(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for attrs in [{}, *map(variant, args.variants)]:
            path = Path(scratch) / "variant.onnx"
            onnx.save(with_op_attributes(base, "DHSAAttention", attrs) if attrs else base, str(path))
            result = perplexity([str(path)], [args.length], windows_per_length=1)["results"][0]
            rows.append({"options": attrs or "as exported", **result, "model": args.model})
            print(f"{json.dumps(attrs) if attrs else 'as exported':>28}  ppl {result.get('ppl', float('nan')):.3f}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"length": args.length, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
