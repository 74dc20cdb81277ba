"""Can ONNX Runtime's dynamic int8 (MatMulInteger, the fast one here) be made accurate on SmolLM2?

    edgekit export smollm2-135m --method dhsa --logits-to-keep 8 -o dhsa-k8.onnx
    python benchmarks/int8_recipes.py dhsa-k8.onnx --json int8-recipes.json \
        per-tensor keep:down keep:down,qkv smooth:0.5 smooth:0.75 smooth:0.75+keep:down first-position

Each recipe is ORT's `quantize_dynamic` (per-tensor activations) on a variant of the float graph, checked as
`edgekit quantize` checks (top-1 on 32 windows of real text):
- `keep:ROLES` leaves the projections of those roles float (qkv, o, gate_up, down; by where their input
  comes from, so the roles hold for any Llama-shaped export);
- `smooth:ALPHA` folds SmoothQuant's per-channel scales into the graph first (exact in float: the RMSNorm
  weights before q/k/v and gate/up, the up projection's columns before down), calibrated on 8 other windows;
- `first-position` computes position 0 (where SmolLM2 puts its massive activations) in fp32, apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit import quantizing
from edgekit.agreement import agreement_feeds, check_sizes
from edgekit.session import Session


def links(model: onnx.ModelProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """The node writing each tensor, and the nodes reading it."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    return producer, readers


def roles(model: onnx.ModelProto) -> dict[str, list[str]]:
    """MatMul node names by projection role, read off the graph around them."""
    weights = {t.name for t in model.graph.initializer}
    producer, readers = links(model)
    found: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in weights or n.input[0] not in producer:
            continue
        source = producer[n.input[0]].op_type
        role = {"Mul": "down", "Reshape": "o"}.get(source)
        if source == "RMSNormalization":
            matmuls = sum(r.op_type == "MatMul" for r in readers[n.input[0]])
            role = {3: "qkv", 2: "gate_up"}.get(matmuls)
        if role:
            found.setdefault(role, []).append(n.name)
    return found


def smoothed(model: onnx.ModelProto, path: str, alpha: float, feeds: list[dict]) -> onnx.ModelProto:
    """SmoothQuant's scales s = max|x|^alpha / max|w|^(1-alpha) per input channel, folded into the graph."""
    import onnxruntime as ort

    init = {t.name: t for t in model.graph.initializer}
    producer, readers = links(model)
    groups = []  # (activation, the tensor scaled down, its axis, weights scaled up)
    for n in model.graph.node:
        mms = [r for r in readers.get(n.output[0], []) if r.op_type == "MatMul" and r.input[1] in init]
        if not mms or any(init[m.input[1]].dims[1] > 10_000 for m in mms):  # not the vocabulary head
            continue
        if n.op_type == "RMSNormalization" and n.input[1] in init:
            groups.append((n.output[0], n.input[1], 0, [m.input[1] for m in mms]))
        up = producer.get(n.input[1]) if n.op_type == "Mul" else None
        if up is not None and up.op_type == "MatMul" and up.input[1] in init:
            groups.append((n.output[0], up.input[1], 1, [m.input[1] for m in mms]))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for act, *_ in groups:
        probe.graph.output.append(helper.make_tensor_value_info(act, onnx.TensorProto.FLOAT, None))
    onnx.save(probe, path, save_as_external_data=True, location=Path(path).name + ".data")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [g[0] for g in groups]
    amax = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            amax[name] = np.maximum(amax[name], np.abs(value).reshape(-1, value.shape[-1]).max(0))
    for act, scaled, axis, ws in groups:
        wmax = np.max([np.abs(numpy_helper.to_array(init[w])).max(1) for w in ws], axis=0)
        s = np.clip(np.maximum(amax[act], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e3)
        s = s.astype(np.float32)
        t = numpy_helper.to_array(init[scaled])
        init[scaled].CopyFrom(numpy_helper.from_array(t / (s if axis == 0 else s[None, :]), scaled))
        for w in ws:
            init[w].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init[w]) * s[:, None], w))
    return model


def first_position_apart(model: onnx.ModelProto, projections: list[str]) -> list[str]:
    """Each projection becomes Concat(MatMul(x[:, :1]), MatMul(x[:, 1:])); returns the position-0 MatMuls."""
    graph = model.graph
    for name, value in (("fp_0", 0), ("fp_1", 1), ("fp_end", 2**62)):
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    firsts, nodes = [], []
    for n in graph.node:
        if n.name not in projections:
            nodes.append(n)
            continue
        (x, w), y = n.input, n.output[0]
        nodes += [helper.make_node("Slice", [x, "fp_0", "fp_1", "fp_1"], [f"{y}_x0"], name=f"{n.name}_s0"),
                  helper.make_node("Slice", [x, "fp_1", "fp_end", "fp_1"], [f"{y}_xr"], name=f"{n.name}_sr"),
                  helper.make_node("MatMul", [f"{y}_x0", w], [f"{y}_y0"], name=f"{n.name}_first"),
                  helper.make_node("MatMul", [f"{y}_xr", w], [f"{y}_yr"], name=n.name),
                  helper.make_node("Concat", [f"{y}_y0", f"{y}_yr"], [y], axis=1, name=f"{n.name}_cat")]
        firsts.append(f"{n.name}_first")
    del graph.node[:]
    graph.node.extend(nodes)
    return firsts


def register(name: str, keep_float: list[str]) -> None:
    """A precision `name` in edgekit's registry: dynamic int8 with `keep_float` nodes left float."""
    def quantize(job) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(job.source), str(job.output), op_types_to_quantize=[*quantizing.TARGET_OPS, "Gather"],
                         weight_type=QuantType.QInt8, use_external_data_format=job.external,
                         nodes_to_exclude=keep_float, extra_options={"MatMulConstBOnly": True})
    quantizing.PRECISIONS[name] = (quantize, f"int8 dynamic, {len(keep_float)} MatMuls kept float")


def run(model_path: str, recipe: str, scratch: Path) -> dict:
    model = onnx.load(model_path)
    found = roles(model)
    keep, changed = [], False
    for part in recipe.split("+"):
        kind, _, arg = part.partition(":")
        if kind == "keep":
            keep += [name for role in arg.split(",") for name in found[role]]
        elif kind == "smooth":
            reference = Session(model_path)
            feeds, _ = agreement_feeds(reference, check_sizes(reference), seed=40, count=8)  # not the check windows
            model, changed = smoothed(model, str(scratch / "probe.onnx"), float(arg), feeds), True
        elif kind == "first-position":
            keep += first_position_apart(model, [n for names in found.values() for n in names])
            changed = True
        elif kind != "per-tensor":
            raise SystemExit(f"unknown recipe part '{part}'")
    source = model_path
    if changed:  # the float variant is what its quantized model is checked against (same outputs, to 1e-4)
        source = str(scratch / "variant.onnx")
        onnx.save(model, source)
    register(recipe, keep)
    result = quantizing.quantize(source, scratch / "quantized.onnx", recipe)
    return {"recipe": recipe, "kept_float": len(keep), "top1": result.agreement.top1,
            "size_ratio": round(result.size_ratio, 3),
            "agreement": result.agreement.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a SmolLM2 export (--logits-to-keep 8, as BENCHMARKS' quantized rows)")
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes:
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(run(args.model, recipe, Path(scratch)))
        print(f"{recipe:32s} kept float {rows[-1]['kept_float']:4d}  top-1 {rows[-1]['top1']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
