"""Report rendering from profile JSON: names that tell models apart."""

from __future__ import annotations

from edgekit.report import display_names, markdown


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


def test_policy_rows_are_labelled_by_workload_and_plotted_by_batch(tmp_path):
    from edgekit.report import plot

    rows = [{"model": m, "method": m.split(".")[0], "workload": {"batch_size": b}, "status": "ok",
             "latency_ms": {"median": 2.0 * b, "p90": 2.0 * b}, "peak_rss_mb": 5.0,
             "throughput": {"value": 500.0, "unit": "steps/s"}} for m in ("dense.onnx", "codebook.onnx") for b in (1, 4)]
    report = {"results": rows, "settings": {"baseline": "dense.onnx"}}
    text = markdown(report)
    assert "| workload |" in text and "| batch 4 (500.0 steps/s) |" in text
    plot(report, str(tmp_path / "policy.png"))
    assert (tmp_path / "policy.png").read_bytes().startswith(b"\x89PNG")
