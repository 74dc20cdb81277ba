"""The GitHub Actions workflow cannot run here: parse it and check it does what CI needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgekit.ep_profiles import available_profiles

ROOT = Path(__file__).parent.parent
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "profile.yml").read_text())


def _steps() -> list[dict]:
    return WORKFLOW["jobs"]["profile"]["steps"]


def test_workflow_triggers_and_matrix_over_device_profiles():
    triggers = WORKFLOW.get("on", WORKFLOW.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    matrix = WORKFLOW["jobs"]["profile"]["strategy"]["matrix"]
    profiles = set(matrix["profile"]) | {entry["profile"] for entry in matrix.get("include", [])}
    assert {"cpu", "cpu-2threads", "cpu-lowmem", "cuda"} <= profiles <= set(available_profiles())
    assert WORKFLOW["jobs"]["profile"]["runs-on"] == "${{ matrix.runner }}"


def test_workflow_installs_profiles_writes_the_summary_and_uploads_the_report():
    runs = "\n".join(step.get("run", "") for step in _steps())
    assert "make setup" in runs and "make profile-ci CI_EP=${{ matrix.profile }}" in runs
    assert '>> "$GITHUB_STEP_SUMMARY"' in runs
    upload = next(step for step in _steps() if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "ci-results/report.html" in upload["with"]["path"]


def test_every_gated_profile_has_a_committed_baseline_or_is_reported_without_a_gate():
    baseline = ROOT / "benchmarks" / "ci-baseline"
    assert (baseline / "cpu" / "llama.json").is_file() and (baseline / "cpu" / "litv2.json").is_file()
    assert "no baseline in" in (ROOT / "Makefile").read_text()  # the others: a report, no gate
