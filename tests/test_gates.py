"""CI gates: threshold parsing, the noise rule, and the exit codes of `report --compare --fail-on`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from test_cli import edgekit

from edgekit import gates

BASELINE = Path(__file__).parent.parent / "benchmarks" / "ci-baseline" / "cpu"


def row(model="m.onnx", median=10.0, p90=11.0, low=9.0, mb=100.0, seq_len=512, runs=()):
    return {"model": model, "method": "dense", "workload": {"seq_len": seq_len}, "status": "ok",
            "latency_ms": {"median": median, "p90": p90, "min": low, "runs": list(runs)}, "peak_rss_mb": mb}


def test_thresholds_parse():
    assert gates.parse_thresholds("latency:+10%,memory:+12.5%") == {"latency": 10.0, "memory": 12.5}
    assert gates.parse_thresholds("latency:5%") == {"latency": 5.0}


@pytest.mark.parametrize("text", ["latency:10", "speed:+10%", "latency:-5%", "", "latency:+x%"])
def test_bad_thresholds_name_the_part(text):
    with pytest.raises(gates.GateError, match="--fail-on"):
        gates.parse_thresholds(text)


@pytest.mark.parametrize("current, verdict", [
    (row(median=10.5), "ok"),  # +5%: under the threshold
    (row(median=12.5, p90=14.0, low=9.5), "within noise"),  # +25%, but spreads 2 + 4.5 cover 2.5 ms
    (row(median=15.0, p90=15.5, low=14.5), "regression"),  # +50%, spreads 2 + 1 do not cover 5 ms
])
def test_noise_rule(current, verdict):
    comparison = gates.compare({"results": [current]}, {"results": [row()]}, {"latency": 10.0})
    assert [c.verdict for c in comparison.changes] == [verdict]
    assert comparison.exit_code == (gates.EXIT_REGRESSION if verdict == "regression" else 0)


def test_spread_is_the_iqr_with_four_runs_or_more():
    steady = row(runs=[10.0, 10.0, 10.0, 10.0, 30.0], p90=22.0, low=10.0)  # one outlier: IQR 10, p90 - min 12
    assert gates.METRICS["latency"](steady)[1] == pytest.approx(10.0)
    assert gates.METRICS["latency"](row())[1] == pytest.approx(2.0)


def test_missing_rows_and_regressions_have_distinct_exit_codes():
    base = {"results": [row(seq_len=512), row(seq_len=1024)]}
    missing = gates.compare({"results": [row(seq_len=512)]}, base, {"memory": 10.0})
    assert missing.missing == [("m.onnx", "dense", "1024 tokens")] and missing.exit_code == gates.EXIT_MISSING
    both = gates.compare({"results": [row(seq_len=512, mb=200.0)]}, base, {"memory": 10.0})
    assert both.exit_code == gates.EXIT_REGRESSION  # a regression is what a CI run must not merge
    text = gates.markdown(both)
    assert "| m.onnx | dense | 512 tokens | memory | 100.00 MB | 200.00 MB | +100.0% (limit +10%) |" in text
    assert "**regression**" in text and "**missing**" in text


def test_rows_match_by_file_name_not_folder():
    current = {"results": [row(model="ci-results/models/m.onnx")]}
    comparison = gates.compare(current, {"results": [row(model="elsewhere/m.onnx")]}, {"latency": 10.0})
    assert not comparison.missing and comparison.exit_code == 0


def _doctored(tmp_path: Path, name: str, scale: float) -> Path:
    """A copy of a committed baseline file with every latency figure (runs too) times `scale`."""
    data = json.loads((BASELINE / name).read_text())
    for r in data["results"]:
        if r["status"] == "ok":
            lat = r["latency_ms"]
            r["latency_ms"] = {k: ([x * scale for x in v] if k == "runs" else v * scale) for k, v in lat.items()}
    path = tmp_path / f"doctored-{name}"
    path.write_text(json.dumps(data))
    return path


def test_synthetic_regression_trips_the_gate_with_exit_3(tmp_path):
    current = [_doctored(tmp_path, name, 1.5) for name in ("llama.json", "litv2.json")]
    proc = edgekit("report", *current, "--compare", BASELINE / "llama.json", "--compare", BASELINE / "litv2.json",
                   "--fail-on", "latency:+10%,memory:+10%")
    assert proc.returncode == gates.EXIT_REGRESSION, proc.stderr
    assert "**regression**" in proc.stdout and "+50.0%" in proc.stdout
    assert proc.stderr.strip() == "Gate failed: a result regressed past its threshold (exit 3); the summary is on stdout"


def test_gate_exit_4_when_baseline_rows_are_missing(tmp_path):
    data = json.loads((BASELINE / "llama.json").read_text())
    fewer = copy.deepcopy(data)
    fewer["results"] = data["results"][:1]
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    proc = edgekit("report", tmp_path / "fewer.json", "--compare", BASELINE / "llama.json",
                   "--fail-on", "latency:+400%", "-o", tmp_path / "summary.md")
    assert proc.returncode == gates.EXIT_MISSING, proc.stderr
    assert "**missing**" in (tmp_path / "summary.md").read_text()


def test_baseline_against_itself_passes():
    files = [BASELINE / "llama.json", BASELINE / "litv2.json"]
    proc = edgekit("report", *files, *[a for f in files for a in ("--compare", f)], "--fail-on", "latency:+1%")
    assert proc.returncode == 0, proc.stderr
    assert "gate: 0 regression(s), 0 within noise, 0 baseline row(s) missing (exit 0)" in proc.stdout
