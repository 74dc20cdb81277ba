"""Where a model's time goes: ONNX Runtime's per-node profile, grouped into categories by a table of rules.

    python -m edgekit.breakdown MODEL.onnx '{"seq_len": 8192}' [--runs 2] [--ep cpu] [--threads 2]

runs the model in this process with `enable_profiling` (so run it in a fresh one, as `profile --breakdown`
does) and prints one JSON object: milliseconds per run by category and by op type.

How ONNX Runtime names what it ran: it inlines every model-local function at session start and names each
inlined node `_inlfunc_<Function>[_token_<k>]_<body node name>` (`_token_<k>` tells the k-th call of the
same function apart); the nodes of a Loop or If body inside the function keep that prefix. A Loop (If)
event lasts as long as its body runs, and the body's nodes are profiled as events of their own inside
that time span, so the nesting comes from the timeline: a node belongs to the innermost control-flow
event whose span holds it. A Loop's own overhead is its time minus its body nodes' times.

Each node is attributed by the first rule of `RULES` that matches its provenance (the function it was
inlined from, or the main graph), its op type and its output type; a node no rule matches counts under
its op type (so a model without edgekit ops, or a vision model, still gets a breakdown by op type).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path

MAIN = "main graph"
CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})
LOOP_OVERHEAD = "loop overhead"
MATMULS = frozenset({"MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul",
                     "QLinearMatMul", "MatMulIntegerToFloat"})
INDEX_OPS = frozenset({"TopK", "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND",
                       "NonZero"})
MOVES = frozenset({"Transpose", "Concat", "Slice", "Reshape", "Pad", "Expand", "Identity", "Squeeze",
                   "Unsqueeze", "Split", "Tile"})
NORMS_ROPE = frozenset({"RMSNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
                        "LayerNormalization", "SkipLayerNormalization", "RotaryEmbedding"})
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt", "Reciprocal", "Exp", "Tanh", "Sigmoid",
                         "Relu", "Gelu", "FastGelu", "QuickGelu", "BiasGelu", "Softmax", "Cast", "Where", "Equal",
                         "Less", "Greater", "And", "Or", "Not", "Min", "Max", "Sin", "Cos", "Range", "Shape",
                         "ConstantOfShape", "ReduceMean", "ReduceSum", "Trilu", "CastLike"})
INTEGER = ("int64", "int32", "bool", "int8", "uint8")  # output types of index math and masks


@dataclasses.dataclass(frozen=True)
class Rule:
    """Nodes from `where` (a function name, or MAIN) of `ops` (None: any) whose output is `output`
    ("float": a float tensor, "integer": indices or a mask, None: any) count as `category`."""

    where: str
    ops: frozenset | None
    output: str | None
    category: str


# first match wins. In a DHSA body, float copies (transposes, concats, slices around the gathers and of the
# output) count as selection; float math before the top-k (boundaries, summaries, scores) as chunk scoring.
RULES = (
    Rule("DHSAAttention", frozenset({"Attention"}), None, "kept attention"),
    Rule("DHSAAttention", INDEX_OPS, None, "selection"),  # top-k of chunks and keys, key / value gathers
    Rule("DHSAAttention", None, "integer", "selection"),  # positions, causal / window masks, ranks
    Rule("DHSAAttention", MOVES - {"Pad"}, "float", "selection"),  # copies around the gathers, the output
    Rule("DHSAAttention", None, "float", "chunk scoring"),  # boundaries, summaries, block . chunk scores
    Rule("SlidingWindowAttention", None, None, "sliding-window attention"),  # banded kernel, masks, copies
    Rule(MAIN, MATMULS, None, "projections/MLP"),
    Rule(MAIN, frozenset({"Attention", "GroupQueryAttention", "MultiHeadAttention"}), None, "attention"),
    Rule(MAIN, NORMS_ROPE | ELEMENTWISE | MOVES | {"Gather"}, None, "other"),  # Gather: the embedding
)


def _output_kind(event: dict) -> str:
    shapes = event["args"].get("output_type_shape") or [{}]
    dtype = next(iter(shapes[0]), "")
    return "integer" if dtype in INTEGER else "float"


def categorize(where: str, op: str, output: str, rules=RULES) -> str:
    """The category of one node (by the first matching rule), else its op type (prefixed by its function)."""
    for rule in rules:
        if rule.where == where and (rule.ops is None or op in rule.ops) and rule.output in (None, output):
            return rule.category
    return op if where == MAIN else f"{where}: {op}"


FOLDED_IF = re.compile(r"^_if_(then|else)_branch")  # ORT's name for a node of an If it folded away


def provenance(node_name: str, functions, folded_owner: str | None = None) -> str:
    """The function a node was inlined from (ORT's `_inlfunc_<Function>_` prefix, innermost), else MAIN.

    An If whose condition is constant (an attribute test in a body) is folded into the graph around it, and
    its nodes lose the prefix (`_if_then_branch_<op>...`): they belong to `folded_owner`, the one function
    holding If nodes when the main graph holds none (see `folded_if_owner`)."""
    best, at = MAIN, -1
    for name in functions:
        for match in re.finditer(rf"_inlfunc_{re.escape(name)}_", node_name):
            if match.start() > at:
                best, at = name, match.start()
    if best == MAIN and folded_owner and FOLDED_IF.match(node_name):
        return folded_owner
    return best


def owners(nodes: list["Node"], functions, folded_owner: str | None = None) -> list[str]:
    """`provenance` of each node, in timeline order. A folded If node that no single function owns (a model
    with two functions holding Ifs, e.g. sliding-window and DHSA layers) goes to the function of its nearest
    non-folded neighbour in the timeline: ORT runs a folded branch among the nodes of the body it came from."""
    owned = [provenance(n.name, functions, folded_owner) for n in nodes]
    anchors = [i for i, n in enumerate(nodes) if owned[i] != MAIN and not FOLDED_IF.match(n.name)]
    for i, node in enumerate(nodes):
        if owned[i] == MAIN and anchors and FOLDED_IF.match(node.name):
            at = bisect.bisect_left(anchors, i)
            near = anchors[max(0, at - 1):at + 1]
            owned[i] = owned[min(near, key=lambda j: (abs(j - i), j > i))]
    return owned


@dataclasses.dataclass
class Node:
    name: str
    op: str
    start: int  # us
    dur: int  # us
    output: str
    children_us: int = 0  # time of the body nodes a Loop / If ran
    parent: "Node | None" = None  # the innermost Loop / If whose span holds this node

    @property
    def end(self) -> int:
        return self.start + self.dur


def timed_nodes(events: list[dict], warmup_runs: int) -> tuple[list[Node], int, float]:
    """Kernel-time events of the timed runs in timeline order (the first `warmup_runs` model_run spans are
    dropped), with each control-flow node's body time filled in; also the number of timed runs and their wall time (ms)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    timed = runs[warmup_runs:]
    if not timed:
        raise ValueError("the profile holds no timed run")
    first = timed[0]["ts"]
    nodes = [Node(e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", "?"), e["ts"], e["dur"],
                  _output_kind(e))
             for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first]
    _nest(nodes)
    return nodes, len(timed), sum(r["dur"] for r in timed) / 1000


def _nest(nodes: list[Node]) -> None:
    """Give each control-flow node the time of the nodes directly inside its span (innermost wins)."""
    nodes.sort(key=lambda n: (n.start, -n.dur))
    open_flow: list[Node] = []
    for node in nodes:
        while open_flow and node.start >= open_flow[-1].end:
            open_flow.pop()
        node.parent = open_flow[-1] if open_flow and node.end <= open_flow[-1].end else None
        if node.parent is not None:
            node.parent.children_us += node.dur
        if node.op in CONTROL_FLOW:
            open_flow.append(node)


def summarize(nodes: list[Node], runs: int, run_ms: float, functions, folded_owner: str | None = None) -> dict:
    """Milliseconds per run by category and by op type (leaf nodes; control flow as its own overhead).
    `nodes` in timeline order, as `timed_nodes` returns them."""
    categories, op_types = collections.Counter(), collections.Counter()
    for node, owner in zip(nodes, owners(nodes, functions, folded_owner)):
        if node.op in CONTROL_FLOW:
            own = max(0, node.dur - node.children_us) / 1000 / runs
            categories[LOOP_OVERHEAD if node.op == "Loop" else f"{node.op} overhead"] += own
            op_types[node.op] += own
            continue
        ms = node.dur / 1000 / runs
        categories[categorize(owner, node.op, node.output)] += ms
        op_types[node.op] += ms
    kernels = sum(n.dur for n in nodes if n.parent is None) / 1000 / runs
    return {"runs": runs, "run_ms": run_ms / runs, "kernel_ms": kernels,
            "categories": dict(categories.most_common()), "op_types": dict(op_types.most_common())}


def function_names(path: str, metadata: dict[str, str]) -> tuple[list[str], str | None]:
    """Functions whose inlined nodes can appear (the model's local functions and its edgekit ops: a compiled
    model holds the bodies already inlined, under the same names; an .ort file has only the metadata),
    and the owner of folded If nodes (`provenance`)."""
    names, owner = set(json.loads(metadata.get("edgekit.ops", "{}"))), None
    if Path(path).suffix == ".onnx":
        from edgekit.session import load_model

        model = load_model(path, load_external_data=False)
        names |= {f.name for f in model.functions}
        owner = folded_if_owner(model)
    return sorted(names), owner


def folded_if_owner(model) -> str | None:
    """The one local function with If nodes (at any depth) when the main graph has none, else None."""
    import onnx

    def has_if(nodes) -> bool:
        return any(n.op_type == "If" or any(has_if(a.g.node) for a in n.attribute
                                            if a.type == onnx.AttributeProto.GRAPH) for n in nodes)

    owners = [f.name for f in model.functions if has_if(f.node)]
    return owners[0] if len(owners) == 1 and not has_if(model.graph.node) else None


def model_file(model: str) -> str:
    """An edgekit model folder is profiled through its prefill graph, as `profile` times it."""
    from edgekit.model_folder import MANIFEST, PREFILL

    return str(Path(model) / PREFILL) if (Path(model) / MANIFEST).is_file() else model


def breakdown(model: str, workload: dict, runs: int = 2, warmup: int = 1, ep: str = "cpu",
              threads: int | None = None, seed: int = 0) -> dict:
    """Profile `runs` runs (after `warmup`) of the model at `workload`; ms per run by category and op type.

    Profiling slows every node a little, so these figures explain a latency; `profile` measures it.
    """
    from edgekit.runners import OnnxRunner

    path = model_file(model)
    with tempfile.TemporaryDirectory(prefix="edgekit-breakdown-") as tmp:
        runner = OnnxRunner(path, ep=ep, threads=threads, profile_prefix=os.path.join(tmp, "profile"))
        feeds = runner.feeds(workload, seed)
        for _ in range(warmup + runs):
            runner.step(feeds)
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    nodes, timed, run_ms = timed_nodes(events, warmup)
    return summarize(nodes, timed, run_ms, *function_names(path, runner.session.metadata))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("workload", type=json.loads)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ep", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from edgekit.errors import EdgekitError

    try:
        result = breakdown(args.model, args.workload, args.runs, args.warmup, args.ep, args.threads)
    except (EdgekitError, ValueError) as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one failed point is recorded, the sweep goes on
        result = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
