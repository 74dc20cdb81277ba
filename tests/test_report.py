"""Report rendering from profile JSON: names that tell models apart, old and new (workload) rows."""

from __future__ import annotations

import json

from edgekit.profiling import add_ratios
from edgekit.report import display_names, load_results, markdown, varying_axis, workload_of


def test_display_names_are_file_names_unless_they_clash():
    names = display_names(["runs/new/dhsa.onnx", "runs/old/dhsa.onnx", "runs/dense.onnx", "smollm2-135m"])
    assert names == {"runs/new/dhsa.onnx": "new/dhsa.onnx", "runs/old/dhsa.onnx": "old/dhsa.onnx",
                     "runs/dense.onnx": "dense.onnx", "smollm2-135m": "smollm2-135m"}


def test_display_names_keep_the_whole_path_when_needed():
    assert display_names(["a/x/m.onnx", "b/x/m.onnx"]) == {"a/x/m.onnx": "a/x/m.onnx", "b/x/m.onnx": "b/x/m.onnx"}
    assert display_names(["m.onnx", "m.onnx"]) == {"m.onnx": "m.onnx"}  # one model listed twice


def test_markdown_rows_tell_same_named_files_apart():
    result = {"method": "dhsa", "seq_len": 8192, "status": "ok", "latency_ms": {"median": 1.0, "p90": 1.0},
              "peak_rss_mb": 10.0}
    report = {"results": [dict(result, model="new/dhsa.onnx"), dict(result, model="old/dhsa.onnx")],
              "settings": {"baseline": "new/dhsa.onnx"}}
    text = markdown(report)
    assert "| new/dhsa.onnx |" in text and "| old/dhsa.onnx |" in text
    assert text.rstrip().endswith("baseline: new/dhsa.onnx")


OLD_ROW = {"model": "dense.onnx", "method": "dense", "seq_len": 4096, "status": "ok",
           "latency_ms": {"median": 10.0, "p90": 11.0}, "peak_rss_mb": 100.0}
IMAGE_ROW = {"model": "vit.onnx", "method": "dense", "task": "image-classification",
             "workload": {"image_size": 224, "batch_size": 1}, "status": "ok",
             "latency_ms": {"median": 2.0, "p90": 2.5}, "peak_rss_mb": 20.0,
             "throughput": {"value": 500.0, "unit": "images/s"}}


def test_old_and_new_rows_load_and_render(tmp_path):
    path = tmp_path / "results.json"
    failed = {"model": "dhsa.onnx", "workload": {"seq_len": 4096}, "seq_len": 4096, "status": "oom",
              "error": "killed by the operating system (out of memory)"}
    path.write_text(json.dumps({"results": [OLD_ROW, failed, IMAGE_ROW], "settings": {"baseline": "dense.onnx"}}))
    text = markdown(load_results(str(path)))
    header = text.splitlines()[0]
    assert "| tokens | image px | batch |" in header and "| throughput |" in header
    assert "| dense.onnx | dense | 4096 | — | — | ok |" in text
    assert "| vit.onnx | dense | — | 224 | 1 | ok |" in text and "500.0 images/s" in text
    assert "| oom [1] |" in text
    assert "[1] dhsa.onnx @ 4096 tokens: killed by the operating system (out of memory)" in text


def test_llm_table_has_no_throughput_column_without_throughput():
    header = markdown({"results": [OLD_ROW], "settings": {"baseline": "dense.onnx"}}).splitlines()[0]
    assert header == ("| model | method | tokens | status | median ms | p90 ms | peak MB | speedup vs baseline "
                      "| memory vs baseline |")


def test_workload_of_old_rows_is_their_seq_len():
    assert workload_of(OLD_ROW) == {"seq_len": 4096}
    assert workload_of(IMAGE_ROW) == {"image_size": 224, "batch_size": 1}


def test_plot_axis_is_the_workload_that_varies():
    rows = [dict(IMAGE_ROW, workload={"image_size": n, "batch_size": 1}) for n in (224, 384)]
    assert varying_axis(rows) == "image_size"
    rows = [dict(IMAGE_ROW, workload={"image_size": 224, "batch_size": b}) for b in (1, 8)]
    assert varying_axis(rows) == "batch_size"
    assert varying_axis([OLD_ROW]) == "seq_len"


def test_ratios_match_the_baseline_at_the_same_workload():
    rows = [dict(IMAGE_ROW, model=m, workload={"image_size": n, "batch_size": 1},
                 latency_ms={"median": t, "p90": t}) for m, n, t in
            [("base", 224, 4.0), ("base", 384, 8.0), ("fast", 224, 2.0), ("fast", 384, 2.0)]]
    add_ratios(rows, baseline="base")
    assert [r["speedup_vs_baseline"] for r in rows] == [1.0, 1.0, 2.0, 4.0]


def test_policy_rows_are_labelled_by_batch_and_plotted_by_batch(tmp_path):
    from edgekit.report import plot

    rows = [{"model": m, "method": m.split(".")[0], "task": "embodied-policy", "workload": {"batch_size": b},
             "status": "ok", "latency_ms": {"median": 2.0 * b, "p90": 2.0 * b}, "peak_rss_mb": 5.0,
             "throughput": {"value": 500.0, "unit": "steps/s"}} for m in ("dense.onnx", "codebook.onnx") for b in (1, 4)]
    report = {"results": rows, "settings": {"baseline": "dense.onnx"}}
    text = markdown(report)
    assert "| batch |" in text.splitlines()[0] and "500.0 steps/s" in text
    assert varying_axis(rows) == "batch_size"
    plot(report, str(tmp_path / "policy.png"))
    assert (tmp_path / "policy.png").read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------------
# several files: HTML, CSV, JSON, Markdown; provenance; schema versions

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from edgekit.errors import ProfileError  # noqa: E402
from edgekit.report_formats import format_of, load_files, render  # noqa: E402

BASELINE = Path(__file__).parent.parent / "benchmarks" / "ci-baseline" / "cpu"


def _two_devices(tmp_path) -> list[Path]:
    """The committed CI baseline as if measured on a second device and commit."""
    other = json.loads((BASELINE / "llama.json").read_text())
    other["environment"].update(cpu="Other CPU", git_commit="abcdef0123", command="edgekit profile on-the-other")
    path = tmp_path / "other" / "llama.json"
    path.parent.mkdir()
    path.write_text(json.dumps(other))
    return [BASELINE / "llama.json", path]


def test_html_is_one_self_contained_file_with_figures_and_provenance(tmp_path):
    passkey = {"summary": [{"model": "d.onnx", "method": m, "seq_len": n, "found": f, "total": 3}
                           for m, n, f in [("dense", 256, 3), ("dhsa", 256, 3), ("dhsa", 1024, 2)]]}
    text = render(load_files(_two_devices(tmp_path)), "html", passkey=[passkey])
    assert text.startswith("<!DOCTYPE html>") and "http://" not in text and "https://" not in text
    assert "<script" not in text and text.count('src="data:image/png;base64,') == 5  # 4 + accuracy vs speed
    assert "Accuracy vs speed" in text and "Speed-up vs the baseline" in text
    assert "Other CPU · cpu · abcdef0" in text  # the device column tells the files apart
    assert "edgekit profile on-the-other" in text and "abcdef0123" in text
    assert "session options" in text and "onnxruntime" in text


def test_csv_and_json_have_one_row_per_result_with_its_device(tmp_path):
    files = load_files(_two_devices(tmp_path))
    lines = render(files, "csv").splitlines()
    assert lines[0].startswith("file,device,model,method,task,seq_len,status,median_ms")
    assert len(lines) == 1 + 8 and sum("Other CPU" in line for line in lines) == 4
    data = json.loads(render(files, "json"))
    assert len(data["rows"]) == 8 and data["files"][1]["environment"]["git_commit"] == "abcdef0123"
    md = render(files, "md")
    assert md.count("## ") == 2 and "Other CPU" in md


def test_old_files_without_provenance_still_render(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"results": [OLD_ROW], "settings": {"baseline": "dense.onnx"}}))
    text = render(load_files([path]), "html")
    assert "not recorded (an older results file)" in text


def test_a_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"results": [OLD_ROW], "settings": {"schema_version": 3}}))
    with pytest.raises(ProfileError, match="schema version 3; this edgekit reads up to 2"):
        load_results(str(path))


@pytest.mark.parametrize("output, fmt, expected", [("r.html", None, "html"), ("r.csv", None, "csv"),
                                                   (None, None, "md"), ("r.txt", "json", "json"), ("r", None, "md")])
def test_format_comes_from_the_flag_then_the_suffix(output, fmt, expected):
    assert format_of(output, fmt) == expected


def test_files_of_different_tasks_plot_apart():
    text = render(load_files([BASELINE / "llama.json", BASELINE / "litv2.json"]), "html")
    assert text.count('src="data:image/png;base64,') == 8
    assert "Latency (median) · text-generation" in text and "Latency (median) · image-classification" in text
