"""Several profile results files side by side (one per device or commit), as Markdown, JSON, CSV or HTML.

Every format comes from the same flat rows (`flat_rows`), so a spreadsheet, a CI summary and the HTML
report never disagree.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgekit.errors import ProfileError
from edgekit.report import display_names, load_results, markdown, workload_of

FORMATS = ("md", "json", "csv", "html")


def load_files(paths) -> list[dict]:
    """Each results file, validated, with a short name and the device it ran on (the report's group)."""
    names = display_names([str(p) for p in paths])
    return [{"path": str(p), "name": names[str(p)], "device": device(data), "data": data}
            for p, data in ((p, load_results(str(p))) for p in paths)]


def device(data: dict) -> str:
    """'Intel Xeon ... · cpu · 1a2b3c4' : CPU (or GPU), execution-provider profile, commit."""
    env = data.get("environment", {})
    commit = (env.get("git_commit") or "")[:7]
    parts = [env.get("gpu") or env.get("cpu") or "?", env.get("execution_provider", {}).get("profile", "?"), commit]
    return " · ".join(p for p in parts if p)


def flat_rows(files: list[dict]) -> list[dict]:
    """One dict per result row, with its file and device: the CSV lines, the JSON rows, the HTML table."""
    rows = []
    for f in files:
        names = display_names(r["model"] for r in f["data"]["results"])
        for r in f["data"]["results"]:
            latency, throughput = r.get("latency_ms") or {}, r.get("throughput") or {}
            rows.append({"file": f["name"], "device": f["device"], "model": names[r["model"]],
                         "method": r.get("method"), "task": r.get("task"), **workload_of(r),
                         "status": r["status"], "median_ms": latency.get("median"), "p90_ms": latency.get("p90"),
                         "min_ms": latency.get("min"), "peak_rss_mb": r.get("peak_rss_mb"),
                         "gpu_peak_mb": r.get("gpu_peak_mb"), "throughput": throughput.get("value"),
                         "throughput_unit": throughput.get("unit"), "speedup": r.get("speedup_vs_baseline"),
                         "memory_ratio": r.get("memory_ratio_vs_baseline"), "error": r.get("error")})
    return rows


def to_csv(files: list[dict]) -> str:
    rows = flat_rows(files)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(files: list[dict], gate: str | None = None) -> str:
    """The rows plus each file's provenance (environment and settings), for scripts."""
    sources = [{"file": f["name"], "path": f["path"], "device": f["device"],
                "environment": f["data"].get("environment", {}), "settings": f["data"].get("settings", {})}
               for f in files]
    return json.dumps({"files": sources, "rows": flat_rows(files), "gate": gate}, indent=2) + "\n"


def to_markdown(files: list[dict], gate: str | None = None) -> str:
    """Today's table per file (a heading each when there are several), then the gate's summary."""
    if len(files) == 1:
        parts = [markdown(files[0]["data"])]
    else:
        parts = [f"## {f['name']} ({f['device']})\n\n{markdown(f['data'])}" for f in files]
    return "\n\n".join(parts + ([f"## Compared with the baseline\n\n{gate}"] if gate else []))


def render(files: list[dict], fmt: str, *, passkey: list[dict] = (), comparison=None) -> str:
    """The report in one format; `comparison` is a gates.Comparison (its summary joins the report)."""
    from edgekit import gates

    if fmt not in FORMATS:
        raise ProfileError(f"unknown report format '{fmt}'; known: {', '.join(FORMATS)}")
    gate = gates.markdown(comparison) if comparison else None
    if fmt == "html":
        from edgekit.html_report import html

        return html(files, passkey=passkey, comparison=comparison)
    if fmt == "csv":
        return to_csv(files)
    return to_json(files, gate) if fmt == "json" else to_markdown(files, gate) + "\n"


def format_of(output: str | None, fmt: str | None) -> str:
    """--format wins; else the output's suffix (.html, .csv, .json, .md); else Markdown."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lstrip(".").lower() if output else ""
    return {"htm": "html", "markdown": "md"}.get(suffix, suffix if suffix in FORMATS else "md")


def load_passkey(path: str) -> dict:
    """A `passkey --json` or `eval retrieval --json` file (for the accuracy-vs-speed chart)."""
    from edgekit.eval_results import load_accuracy

    return load_accuracy(path)
