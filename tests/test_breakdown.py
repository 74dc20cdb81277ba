"""edgekit.breakdown: ORT's per-node profile grouped by rules (nesting from the timeline, Loop overhead,
warm-up runs dropped), on synthetic events and on real tiny exports (DHSA sparse, dense), and through
`profile --breakdown` into the JSON, the Markdown table and the figures."""

from __future__ import annotations

import json

import pytest
from test_cli import PNG_MAGIC, assert_ok, edgekit

from edgekit import breakdown as bd
from edgekit.exporting import export
from edgekit.report import load_results, markdown

DHSA_SPARSE = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16, check_tokens=16)


def _node(name, op, ts, dur, dtype="float"):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, "output_type_shape": [{dtype: [1]}]}}


def _run(ts, dur):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _events(offset):
    """One run: a MatMul, then a DHSA Loop (1000 us) holding an Attention, a TopK, a mask and a Where."""
    f = "_inlfunc_DHSAAttention_token_1"
    return [_run(offset, 2000), _node("node_q_proj", "MatMul", offset + 10, 300),
            _node(f"{f}_n9", "Loop", offset + 400, 1000),
            _node(f"{f}_n1", "Attention", offset + 410, 500), _node(f"{f}_n2", "TopK", offset + 920, 100),
            _node(f"{f}_n3", "Less", offset + 1030, 50, "bool"), _node(f"{f}_n4", "Where", offset + 1090, 150),
            _node("node_norm", "RMSNormalization", offset + 1500, 40), _node("node_conv", "Conv", offset + 1600, 60)]


def test_loop_overhead_and_rules_from_the_timeline():
    nodes, runs, run_ms = bd.timed_nodes(_events(0) + _events(10_000), warmup_runs=1)
    assert runs == 1 and run_ms == 2.0
    result = bd.summarize(nodes, runs, run_ms, ["DHSAAttention"])
    assert result["categories"] == pytest.approx({
        "kept attention": 0.5, "projections/MLP": 0.3, "loop overhead": 0.2, "chunk scoring": 0.15,
        "selection": 0.15, "other": 0.04, "Conv": 0.06})
    assert result["kernel_ms"] == pytest.approx(sum(result["categories"].values()))  # 0.3 + 1.0 + 0.04 + 0.06


def test_provenance_is_the_innermost_function_and_unknown_ops_fall_back_to_op_types():
    assert bd.provenance("_inlfunc_DHSAAttention_token_12_n84", ["DHSAAttention", "HiLo"]) == "DHSAAttention"
    assert bd.provenance("_inlfunc_Outer_n3__inlfunc_HiLo_n1", ["Outer", "HiLo"]) == "HiLo"
    assert bd.provenance("node_MatMul_3", ["DHSAAttention"]) == bd.MAIN
    assert bd.categorize("HiLo", "MatMul", "float") == "HiLo: MatMul"
    assert bd.categorize(bd.MAIN, "Conv", "float") == "Conv"
    assert bd.categorize("DHSAAttention", "Sub", "integer") == "selection"


def test_folded_if_nodes_go_to_the_function_around_them_when_two_functions_hold_ifs():
    """Gemma3's DHSA export has Ifs in both SlidingWindowAttention and DHSAAttention: ORT's folded branch
    nodes lose their function prefix, and a folded MatMul must not count as a main-graph projection."""
    sw, dhsa = "_inlfunc_SlidingWindowAttention_token_1", "_inlfunc_DHSAAttention_token_2"
    events = [_run(0, 3000), _node(f"{sw}_n1", "Pad", 10, 50),
              _node("_if_then_branch_Attention", "Attention", 70, 400),
              _node("node_o_proj", "MatMul", 500, 300), _node("node_norm", "RMSNormalization", 820, 20),
              _node("_if_else_branch_MatMul", "MatMul", 850, 200), _node(f"{dhsa}_n2", "TopK", 1060, 100),
              _node("_if_then_branch_token_3_ReduceMax", "ReduceMax", 1170, 30), _node("node_down", "MatMul", 1300, 100)]
    nodes, runs, run_ms = bd.timed_nodes(events, warmup_runs=0)
    owned = bd.owners(sorted(nodes, key=lambda n: n.start), ["SlidingWindowAttention", "DHSAAttention"])
    assert owned == ["SlidingWindowAttention", "SlidingWindowAttention", bd.MAIN, bd.MAIN, "DHSAAttention",
                     "DHSAAttention", "DHSAAttention", bd.MAIN]
    result = bd.summarize(nodes, runs, run_ms, ["SlidingWindowAttention", "DHSAAttention"])
    assert result["categories"]["projections/MLP"] == pytest.approx(0.4)  # o_proj + down, not the folded MatMul
    assert result["categories"]["sliding-window attention"] == pytest.approx(0.45)
    assert result["categories"]["chunk scoring"] == pytest.approx(0.23)  # folded float MatMul + ReduceMax
    assert result["categories"]["selection"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("breakdown")
    dense = export("llama-tiny", str(out / "dense.onnx"), "dense", check_tokens=16).path
    dhsa = export("llama-tiny", str(out / "dhsa.onnx"), "dhsa", **DHSA_SPARSE).path
    return out, dense, dhsa


def test_dhsa_body_nodes_are_all_attributed_by_the_rules(models):
    _, _, dhsa = models
    result = bd.breakdown(dhsa, {"seq_len": 200}, runs=1, threads=1)
    categories = result["categories"]
    assert {"kept attention", "selection", "chunk scoring", "loop overhead", "projections/MLP"} <= set(categories)
    assert not [c for c in categories if c.startswith("DHSAAttention:")]  # every body node matched a rule
    assert sum(categories.values()) == pytest.approx(result["kernel_ms"], rel=1e-6)
    assert result["kernel_ms"] <= result["run_ms"]


def test_dhsa_within_the_budget_runs_the_dense_attention_alone(models):
    _, dense, dhsa = models
    ops = {}
    for path, attention in ((dense, "attention"), (dhsa, "kept attention")):  # 48 <= budget: DHSA is dense
        result = bd.breakdown(path, {"seq_len": 48}, runs=1, threads=1)
        assert attention in result["categories"] and "projections/MLP" in result["categories"]
        ops[path] = set(result["op_types"])
    # beyond the dense export's ops, only the branch test's scalar math: no scoring, selection or Loop
    assert ops[dhsa] - ops[dense] <= {"If", "Where", "Sqrt", "Reciprocal", "Cast", "Shape", "LessOrEqual", "Less",
                                      "Greater", "And", "Not", "Mul", "Squeeze", "Reshape", "CastLike"}


def test_profile_breakdown_json_table_and_figures(models):
    out, dense, dhsa = models
    proc = edgekit("profile", dense, dhsa, "--seq-lens", "200", "--repeat", 1, "--warmup", 0, "--breakdown",
                   "--json", out / "p.json", "--breakdown-plot", out / "b.png")
    assert_ok(proc)
    assert "Where the time goes" in proc.stdout and "| kept attention |" not in proc.stdout.splitlines()[0]
    data = load_results(str(out / "p.json"))
    assert data["settings"]["breakdown"] is True
    assert all("categories" in r["breakdown"] for r in data["results"])
    assert "kept attention" in markdown(data)
    assert (out / "b.png").read_bytes().startswith(PNG_MAGIC)
    proc = edgekit("report", out / "p.json", "-o", out / "r.html")
    assert_ok(proc)
    assert "Where the time goes" in (out / "r.html").read_text()


def test_module_prints_one_json_object(models, capsys):
    _, dense, _ = models
    bd.main([dense, json.dumps({"seq_len": 16}), "--runs", "1", "--threads", "1"])
    assert "projections/MLP" in json.loads(capsys.readouterr().out)["categories"]
