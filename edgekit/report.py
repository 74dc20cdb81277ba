"""Reports rendered from profile JSON (the source of truth): a Markdown table and a PNG figure."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import ProfileError
from edgekit.files import atomic_output
from edgekit.tasks import describe


def load_results(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read profile results {path}: {exc}") from None
    if not isinstance(data, dict) or "results" not in data:
        raise ProfileError(f"{path} is not an edgekit profile (no 'results')")
    return data


def display_names(models) -> dict[str, str]:
    """Each model's shortest trailing path that no other model shares: file names unless two clash."""
    paths = {m: Path(m).parts or (m,) for m in dict.fromkeys(models)}
    names = {}
    for model, parts in paths.items():
        for n in range(1, len(parts) + 1):
            tail = parts[-n:]
            if not any(other != model and o[-n:] == tail for other, o in paths.items()):
                break
        names[model] = str(Path(*tail))
    return names


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _workload_label(row: dict) -> str:
    """A token model's row is labelled by its length; any other task's by its workload and throughput."""
    if "seq_len" in row:
        return str(row["seq_len"])
    rate = row.get("throughput") or {}
    label = describe(row.get("workload", {}))
    return f"{label} ({rate['value']:.1f} {rate['unit']})" if rate else label


def markdown(report: dict) -> str:
    """One row per (model, workload); ratios are against the first model at the same workload."""
    tokens = all("seq_len" in r for r in report["results"])
    rows = [
        f"| model | method | {'tokens' if tokens else 'workload'} | status | median ms | p90 ms | peak MB "
        "| speedup vs baseline | memory vs baseline |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    baseline = report.get("settings", {}).get("baseline", "?")
    names = display_names([r["model"] for r in report["results"]] + [baseline])
    for r in report["results"]:
        lat = r.get("latency_ms") or {}
        rows.append(
            f"| {names[r['model']]} | {r.get('method', '—')} | {_workload_label(r)} | {r['status']} "
            f"| {_fmt(lat.get('median'), '{:.1f}')} | {_fmt(lat.get('p90'), '{:.1f}')} "
            f"| {_fmt(r.get('peak_rss_mb'), '{:.0f}')} | {_fmt(r.get('speedup_vs_baseline'), '{:.2f}x')} "
            f"| {_fmt(r.get('memory_ratio_vs_baseline'), '{:.2f}x')} |"
        )
    env = report.get("environment", {})
    ep = env.get("execution_provider", {})
    footer = (f"\n{env.get('cpu', '?')}, {env.get('logical_cores', '?')} logical cores, "
              f"{env.get('memory_gb', '?')} GB; ONNX Runtime {env.get('versions', {}).get('onnxruntime', '?')} "
              f"profile '{ep.get('profile', '?')}'; baseline: {names[baseline]}")
    return "\n".join(rows) + "\n" + footer


def _x_axis(report: dict):
    """(x of a row, axis label, run name): prompt length for token models, batch size for the other tasks."""
    if all("seq_len" in r for r in report["results"]):
        return (lambda r: r["seq_len"]), "prompt tokens", "Prefill"
    return (lambda r: r.get("workload", {}).get("batch_size", 1)), "batch size", "Step"


def plot(report: dict, output: str) -> None:
    """Latency curves (log-log) beside peak-memory bars, one series per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series: dict[str, list[dict]] = {}
    for r in report["results"]:
        series.setdefault(r["model"], []).append(r)
    x_of, x_label, run = _x_axis(report)
    lengths = sorted({x_of(r) for r in report["results"]})
    names = display_names(series)
    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (model, rs) in enumerate(series.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        label = f"{names[model]} ({rs[0].get('method', '?')})"
        ax_lat.plot([x_of(r) for r in ok], [r["latency_ms"]["median"] / 1000 for r in ok], "o-", label=label)
        mem = {x_of(r): r["peak_rss_mb"] for r in ok}
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(lengths))]
        ax_mem.bar(xs, [mem.get(n, 0) for n in lengths], width, label=label)
        for x, n in zip(xs, lengths):
            failed = next((r["status"] for r in rs if x_of(r) == n and r["status"] != "ok"), None)
            if failed:
                ax_mem.annotate(failed, (x, 0), ha="center", va="bottom", rotation=90, fontsize=8)
    ax_lat.set(xscale="log", yscale="log", xlabel=x_label, ylabel=f"{run.lower()} latency, median (s)",
               title=f"{run} latency")
    ax_lat.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured lengths
    ax_lat.set_xticks(lengths, [str(n) for n in lengths])
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=8)
    ax_mem.set(xlabel=x_label, ylabel="peak RSS above loaded model (MB)", title="Peak memory")
    ax_mem.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax_mem.legend(fontsize=8)
    env = report.get("environment", {})
    fig.suptitle(f"{env.get('cpu', '')} · {env.get('logical_cores', '?')} cores", fontsize=9)
    fig.tight_layout()
    with atomic_output(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_json(report: dict, output: str) -> None:
    with atomic_output(output) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
