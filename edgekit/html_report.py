"""One self-contained HTML report (jinja2 template, matplotlib figures embedded as base64 PNG, no network)."""

from __future__ import annotations

import base64
import io

from edgekit import gates
from edgekit.report import axis_names, breakdown_figure, display_names, varying_axis, workload_of
from edgekit.report_formats import flat_rows


def html(files: list[dict], *, passkey: list[dict] = (), comparison: gates.Comparison | None = None) -> str:
    """Figures, the table of every row (grouped by file, a device column), the gate and each file's provenance."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edgekit", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        files=[_provenance(f) for f in files], rows=flat_rows(files), figures=figures(files, passkey),
        comparison=comparison, units=gates.UNITS, gate_rule=gates.__doc__.split("The noise rule: ")[1].strip())


def _provenance(f: dict) -> dict:
    env, settings = f["data"].get("environment", {}), f["data"].get("settings", {})
    return {"name": f["name"], "path": f["path"], "device": f["device"], "command": env.get("command"),
            "git_commit": env.get("git_commit"), "date": env.get("date"), "versions": env.get("versions", {}),
            "machine": {k: env.get(k) for k in ("cpu", "gpu", "logical_cores", "physical_cores", "memory_gb",
                                                "platform", "python")},
            "execution_provider": env.get("execution_provider", {}), "settings": settings}


def _series(files: list[dict]) -> dict[str, list[dict]]:
    """Rows per plotted line: one per (file, model); the file name leads only when there are several."""
    series: dict[str, list[dict]] = {}
    for f in files:
        names = display_names(r["model"] for r in f["data"]["results"])
        for r in f["data"]["results"]:
            label = f"{names[r['model']]} ({r.get('method') or '?'})"
            series.setdefault(f"{f['name']}: {label}" if len(files) > 1 else label, []).append(r)
    return series


def figures(files: list[dict], passkey: list[dict] = ()) -> list[dict]:
    """Per task: latency, peak memory, speed-up and throughput over the workload that varies; then accuracy
    vs speed. Tasks plot apart: tokens and pixels share no axis."""
    tasks = _by_task(files)
    charts = []
    for task, task_files in tasks.items():
        suffix = f" · {task}" if len(tasks) > 1 else ""
        charts += [(title + suffix, png) for title, png in _task_charts(_series(task_files))]
        charts.append(("Where the time goes (ONNX Runtime's per-node profile, `profile --breakdown`)" + suffix,
                       _breakdown(task_files)))
    if passkey:
        charts.append(("Accuracy vs speed (retrieval hits vs prefill latency)", _accuracy(files, passkey)))
    return [{"title": t, "png": png} for t, png in charts if png]


def _by_task(files: list[dict]) -> dict[str, list[dict]]:
    """The files again, each cut down to one task's rows, per task (in the order tasks first appear)."""
    tasks = list(dict.fromkeys(r.get("task", "text-generation") for f in files for r in f["data"]["results"]))
    return {task: [dict(f, data={**f["data"], "results": rows}) for f in files
                   if (rows := [r for r in f["data"]["results"] if r.get("task", "text-generation") == task])]
            for task in tasks}


def _task_charts(series: dict[str, list[dict]]) -> list[tuple]:
    axis = varying_axis([r for rows in series.values() for r in rows])
    x_label = axis_names(axis)[1]
    return [
        ("Latency (median)", _lines(series, axis, lambda r: r["latency_ms"]["median"], x_label, "ms", log=True)),
        ("Peak memory (RSS above the loaded model)", _bars(series, axis, x_label)),
        ("Speed-up vs the baseline", _lines(series, axis, lambda r: r.get("speedup_vs_baseline"), x_label, "x")),
        ("Throughput", _lines(series, axis, lambda r: (r.get("throughput") or {}).get("value"), x_label,
                              _unit(series))),
    ]


def _breakdown(files: list[dict]) -> str | None:
    """Stacked bars of every row with a breakdown (the file name leads when there are several)."""
    rows, names = [], {}
    for f in files:
        short = display_names(r["model"] for r in f["data"]["results"])
        for r in f["data"]["results"]:
            key = f"{f['name']}: {short[r['model']]}" if len(files) > 1 else short[r["model"]]
            rows.append({**r, "model": key})
            names[key] = key
    fig = breakdown_figure(rows, names, _pyplot())
    return _png(fig) if fig is not None else None


def _unit(series: dict) -> str:
    units = {(r.get("throughput") or {}).get("unit") for rows in series.values() for r in rows} - {None}
    return ", ".join(sorted(units)) or "items/s"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """The figure as base64 PNG (embedded in an <img src="data:...">), closed after."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _lines(series, axis, value, x_label, y_label, log=False) -> str | None:
    """One line per series of `value(row)` over the workload axis; None when no row has the value."""
    points = {name: [(workload_of(r).get(axis), value(r)) for r in rows if r["status"] == "ok"]
              for name, rows in series.items()}
    points = {name: [(x, y) for x, y in ps if x is not None and y is not None] for name, ps in points.items()}
    if not any(points.values()):
        return None
    fig, ax = _pyplot().subplots(figsize=(7, 3.6))
    from matplotlib.ticker import NullLocator

    for name, ps in points.items():
        if ps:
            ax.plot(*zip(*sorted(ps)), "o-", label=name)
    ax.set(xlabel=x_label, ylabel=y_label, xscale="log" if log else "linear", yscale="log" if log else "linear")
    sizes = sorted({x for ps in points.values() for x, _ in ps})
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured sizes
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def _bars(series, axis, x_label) -> str | None:
    """Grouped peak-memory bars per workload; a failed point is marked with its status."""
    sizes = sorted({workload_of(r).get(axis) for rows in series.values() for r in rows} - {None})
    if not sizes:
        return None
    fig, ax = _pyplot().subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(series))
    for i, (name, rows) in enumerate(series.items()):
        by_x = {workload_of(r).get(axis): r for r in rows}
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(sizes))]
        ax.bar(xs, [(by_x.get(n) or {}).get("peak_rss_mb") or 0 for n in sizes], width, label=name)
        for x, n in zip(xs, sizes):
            if n in by_x and by_x[n]["status"] != "ok":
                ax.annotate(by_x[n]["status"], (x, 0), ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
    peaks = [r["peak_rss_mb"] for rows in series.values() for r in rows if (r.get("peak_rss_mb") or 0) > 0]
    wide = peaks and max(peaks) > 100 * min(peaks)  # llama.cpp's 23 MB beside dense's 12 GB: log, or it vanishes
    ax.set(xlabel=x_label, ylabel="MB", yscale="log" if wide else "linear")
    ax.legend(fontsize=7)
    return _png(fig)


def accuracy_points(files: list[dict], passkey: list[dict]) -> dict[str, list[tuple]]:
    """(latency ms, hit rate, seq_len) per series "method[ · task]", from passkey and `eval retrieval` summaries.

    Rows at a budget other than the exported one are left out: the profile timed the model as exported.
    """
    latency = {(r.get("method"), r.get("seq_len")): r["latency_ms"]["median"]
               for f in files for r in f["data"]["results"] if r["status"] == "ok" and r.get("seq_len")}
    points: dict[str, list] = {}
    for data in passkey:
        for s in data["summary"]:
            ms = latency.get((s["method"], s["seq_len"]))
            as_exported = s.get("budget") in (None, s.get("exported_budget"))
            if ms is not None and s["total"] and as_exported:
                label = s["method"] + (f" · {s['task']}" if s.get("task") else "")
                points.setdefault(label, []).append((ms, s["found"] / s["total"], s["seq_len"]))
    return points


def _accuracy(files: list[dict], passkey: list[dict]) -> str | None:
    """Retrieval hit rate (y) against the latency the profile measured for the same method and length (x)."""
    points = accuracy_points(files, passkey)
    if not points:
        return None
    fig, ax = _pyplot().subplots(figsize=(7, 3.6))
    for label, ps in points.items():
        ax.plot([p[0] for p in ps], [p[1] for p in ps], "o", label=label)
        for ms, hits, n in ps:
            ax.annotate(f"{n} tok", (ms, hits), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="prefill latency, median (ms)", ylabel="answers found / prompts", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)
    return _png(fig)
