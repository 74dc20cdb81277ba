"""Reports rendered from profile JSON (the source of truth): a Markdown table and a PNG figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from edgekit.errors import ProfileError
from edgekit.files import atomic_output, save_figure

SCHEMA_VERSION = 2  # settings.schema_version of new files; 1 (absent): files from before provenance fields

# workload key -> (table column, plot axis label, one value in words); other keys show as themselves
WORKLOAD_AXES = {
    "seq_len": ("tokens", "prompt tokens", "{} tokens"),
    "image_size": ("image px", "image size (px)", "{} px"),
    "batch_size": ("batch", "batch size", "batch {}"),
    "steps": ("steps", "steps", "{} steps"),
}


class Latency(BaseModel):
    median: float
    p90: float
    min: Optional[float] = None
    runs: list[float] = []


class Throughput(BaseModel):
    value: float
    unit: str


class SweepSettings(BaseModel):
    """One llama.cpp setting a sweep tried (edgekit.llamacpp.LlamaCppSettings, as written)."""

    threads: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    kv_type: str
    mmap: bool


class SweepTrial(BaseModel):
    axis: str  # the axis this trial varied ("start", "grid" or an axis name)
    settings: SweepSettings
    status: Literal["ok", "oom", "error", "timeout"]
    median_ms: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    error: Optional[str] = None


class Sweep(BaseModel):
    """A llama.cpp sweep of one model at one workload: every trial, and the winner (None: none ran)."""

    model: str
    workload: dict[str, int]
    strategy: Literal["axes", "grid"]
    trials: list[SweepTrial]
    chosen: Optional[SweepSettings]


class RowSweep(BaseModel):
    """On a row measured with a sweep's winner: where it was tuned and what won."""

    tuned_at: dict[str, int]
    strategy: str
    trials: int
    chosen: SweepSettings


class Breakdown(BaseModel):
    """`profile --breakdown`: ONNX Runtime's per-node profile of the point, ms per run (edgekit.breakdown)."""

    runs: int
    run_ms: float  # the profiled run's wall time (profiling slows it: the row's latency is the untouched one)
    kernel_ms: float  # the main graph's node times: run_ms less the executor's own time between nodes
    categories: dict[str, float]  # category (edgekit.breakdown.RULES, else the op type) -> ms
    op_types: dict[str, float] = {}


class FailedBreakdown(BaseModel):
    error: str


class _Row(BaseModel):
    """Fields every profile row has; files from before workloads existed hold `seq_len` only."""

    model_config = ConfigDict(extra="allow")
    model: str
    method: Optional[str] = None
    task: str = "text-generation"
    workload: Optional[dict[str, int]] = None
    seq_len: Optional[int] = None
    error: Optional[str] = None
    throughput: Optional[Throughput] = None
    llamacpp_sweep: Optional[RowSweep] = None

    @model_validator(mode="after")
    def _has_workload(self):
        if self.workload is None and self.seq_len is None:
            raise PydanticCustomError("missing", "'seq_len' (or 'workload') missing")
        return self


class OkRow(_Row):
    status: Literal["ok"]
    latency_ms: Latency
    peak_rss_mb: float
    breakdown: Optional[Union[Breakdown, FailedBreakdown]] = None


class FailedRow(_Row):
    status: Literal["oom", "error", "timeout"]


class ResultsFile(BaseModel):
    """A `profile --json` file: what `report` can render."""

    model_config = ConfigDict(extra="allow")
    results: list[Annotated[Union[OkRow, FailedRow], Field(discriminator="status")]]
    settings: dict = {}
    environment: dict = {}
    llamacpp_sweeps: list[Sweep] = []


def load_results(path: str) -> dict:
    """Read and validate a profile results file; anything wrong is named in one line."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are no text at all
        raise ProfileError(f"cannot read profile results {path}: {exc}") from None
    if isinstance(data, dict) and "summary" in data:
        raise ProfileError(f"{path}: this is a {data.get('kind', 'passkey')} results file; its command prints its "
                           f"table, `edgekit report` renders `edgekit profile --json` files (retrieval results "
                           f"join them with --retrieval)")
    if not isinstance(data, dict) or "results" not in data:
        raise ProfileError(f"{path} is not an edgekit profile (no 'results')")
    if data["results"] == []:
        raise ProfileError(f"{path} holds no results (its 'results' list is empty)")
    try:
        ResultsFile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {_schema_error(exc)}") from None
    _check_version(path, data.get("settings", {}).get("schema_version", 1))
    return data


def _check_version(path: str, version) -> None:
    """A file from a newer edgekit may mean something else by the same field: refuse it, say what to do."""
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ProfileError(f"{path} has results schema version {version}; this edgekit reads up to "
                           f"{SCHEMA_VERSION}: upgrade edgekit to read it")


def _schema_error(exc: ValidationError) -> str:
    """The first problem as `row 3: 'latency_ms' missing` (rows count from 1; the status tag is skipped)."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    where, fields = "", loc
    if loc[:1] == ["results"] and len(loc) > 1 and isinstance(loc[1], int):
        where, fields = f"row {loc[1] + 1}: ", loc[3:]  # loc[2] is the row's status (the union's tag)
    name = ".".join(map(str, fields))
    if error["type"] == "missing" and name:
        return f"{where}'{name}' missing"
    return f"{where}'{name}': {error['msg']}" if name else f"{where}{error['msg']}"


def workload_of(row: dict) -> dict:
    """What a row measured ({"seq_len": 4096}, {"image_size": 224, "batch_size": 1}, ...)."""
    return row.get("workload") or {"seq_len": row["seq_len"]}


def axis_names(key: str) -> tuple[str, str, str]:
    """(table column, plot axis label, one value in words) of a workload key."""
    return WORKLOAD_AXES.get(key, (key, key, f"{key} {{}}"))


def workload_label(row: dict) -> str:
    return ", ".join(axis_names(k)[2].format(v) for k, v in workload_of(row).items())


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


def footnotes(rows: list[dict]) -> dict[int, int]:
    """Footnote number of each failed row (by index), in table order."""
    failed = [i for i, r in enumerate(rows) if r.get("status", "ok") != "ok"]
    return {i: n for n, i in enumerate(failed, 1)}


def footnote_lines(rows: list[dict], numbers: dict[int, int], where: Callable[[dict], str]) -> list[str]:
    """`[1] dhsa.onnx @ 4096 tokens: killed by the operating system (out of memory)`: why each point failed."""
    return [f"[{n}] {where(rows[i])}: {rows[i].get('error') or rows[i]['status']}" for i, n in numbers.items()]


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _throughput(row: dict) -> str:
    t = row.get("throughput")
    return f"{t['value']:.1f} {t['unit']}" if t else "—"


# llama-bench's figures, for rows of `profile --decode-tokens N`: pp = prompt tokens/s, tg = generated tokens/s
GENERATION_COLUMNS = [
    ("TTFT ms", True, lambda i, r: _fmt(r.get("ttft_ms"), "{:.1f}")),
    ("pp tokens/s", True, lambda i, r: _fmt(r.get("pp_tokens_per_s"), "{:.0f}")),
    ("tg tokens/s", True, lambda i, r: _fmt(r.get("tg_tokens_per_s"), "{:.1f}")),
]


def markdown(report: dict) -> str:
    """One row per (model, workload); ratios are against the first model at the same workload."""
    results = report["results"]
    keys = list(dict.fromkeys(k for r in results for k in workload_of(r)))
    baseline = report.get("settings", {}).get("baseline", "?")
    names = display_names([r["model"] for r in results] + [baseline])
    numbers = footnotes(results)
    columns = [  # (header, right-aligned, cell)
        ("model", False, lambda i, r: names[r["model"]]),
        ("method", False, lambda i, r: r.get("method") or "—"),
        *[(axis_names(k)[0], True, lambda i, r, k=k: _fmt(workload_of(r).get(k), "{}")) for k in keys],
        ("status", False, lambda i, r: r["status"] + (f" [{numbers[i]}]" if i in numbers else "")),
        ("median ms", True, lambda i, r: _fmt((r.get("latency_ms") or {}).get("median"), "{:.1f}")),
        ("p90 ms", True, lambda i, r: _fmt((r.get("latency_ms") or {}).get("p90"), "{:.1f}")),
        ("peak MB", True, lambda i, r: _fmt(r.get("peak_rss_mb"), "{:.0f}")),
        *([("throughput", True, lambda i, r: _throughput(r))] if any(r.get("throughput") for r in results) else []),
        *(GENERATION_COLUMNS if any(r.get("tg_tokens_per_s") for r in results) else []),
        *([("llama.cpp settings", False, lambda i, r: _sweep_cell(r))] if any(r.get("llamacpp_sweep") for r in results)
          else []),
        ("speedup vs baseline", True, lambda i, r: _fmt(r.get("speedup_vs_baseline"), "{:.2f}x")),
        ("memory vs baseline", True, lambda i, r: _fmt(r.get("memory_ratio_vs_baseline"), "{:.2f}x")),
    ]
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---:" if right else "---" for _, right, _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(i, r) for _, _, cell in columns) + " |" for i, r in enumerate(results)]
    notes = footnote_lines(results, numbers, lambda r: f"{names[r['model']]} @ {workload_label(r)}")
    table = "\n".join(lines + ([""] + notes if notes else [])) + "\n" + _footer(report, names[baseline])
    split = breakdown_markdown(results, names)
    return table + (f"\n\nWhere the time goes (ONNX Runtime's per-node profile, ms per run and share):\n\n{split}"
                    if split else "")


def breakdown_categories(rows: list[dict]) -> list[str]:
    """Categories over all rows, largest total first (the table's columns and the plot's stack order)."""
    totals: dict[str, float] = {}
    for r in rows:
        for name, ms in ((r.get("breakdown") or {}).get("categories") or {}).items():
            totals[name] = totals.get(name, 0.0) + ms
    return sorted(totals, key=totals.get, reverse=True)


def breakdown_markdown(rows: list[dict], names: dict[str, str]) -> str:
    """One line per (model, workload) with a breakdown: ms and % of the node time per category."""
    rows = [r for r in rows if r.get("breakdown")]
    categories = breakdown_categories(rows)
    if not rows:
        return ""
    lines = ["| model | workload | node ms | " + " | ".join(categories) + " |",
             "|---|---|---:|" + "---:|" * len(categories)]
    for r in rows:
        b = r["breakdown"]
        if "error" in b:
            lines.append(f"| {names[r['model']]} | {workload_label(r)} | failed: {b['error']} |"
                         + " |" * len(categories))
            continue
        total = sum(b["categories"].values()) or 1.0
        cells = [f"{b['categories'][c]:.1f} ({100 * b['categories'][c] / total:.0f}%)" if c in b["categories"]
                 else "—" for c in categories]
        lines.append(f"| {names[r['model']]} | {workload_label(r)} | {total:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def breakdown_figure(rows: list[dict], names: dict[str, str], plt, top: int = 8):
    """Stacked bars, one per (model, workload) with a breakdown: ms per run by category (the `top`
    largest; the rest as "rest"). None when no row has one."""
    rows = [r for r in rows if "categories" in (r.get("breakdown") or {})]
    if not rows:
        return None
    categories = breakdown_categories(rows)
    shown, rest = categories[:top], categories[top:]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 3), 4.2))
    labels = [f"{names[r['model']]}\n{workload_label(r)}" for r in rows]
    bottom = [0.0] * len(rows)
    for name in shown + (["rest"] if rest else []):
        keys = rest if name == "rest" else [name]
        ms = [sum(r["breakdown"]["categories"].get(k, 0.0) for k in keys) for r in rows]
        ax.bar(range(len(rows)), ms, 0.7, bottom=bottom, label=name)
        bottom = [b + m for b, m in zip(bottom, ms)]
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="ms per run (node time)", title="Where the time goes")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_breakdown(report: dict, output: str) -> None:
    """The stacked-bar breakdown figure as a PNG (`profile --breakdown --breakdown-plot`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = display_names(r["model"] for r in report["results"])
    fig = breakdown_figure(report["results"], names, plt)
    if fig is None:
        raise ProfileError("no row holds a breakdown: profile with --breakdown")
    save_figure(fig, output)


def _sweep_cell(row: dict) -> str:
    """`t2 b2048/512 fa kv=f16 (best of 7 at 2048 tokens)`: the settings a llama.cpp sweep chose."""
    sweep = row.get("llamacpp_sweep")
    if not sweep:
        return "—"
    from edgekit.llamacpp import LlamaCppSettings

    where = "" if sweep["tuned_at"] == workload_of(row) else f" at {workload_label({'workload': sweep['tuned_at']})}"
    return f"{LlamaCppSettings(**sweep['chosen']).label()} (best of {sweep['trials']}{where})"


def _footer(report: dict, baseline: str) -> str:
    env = report.get("environment", {})
    ep = env.get("execution_provider", {})
    return (f"\n{env.get('cpu', '?')}, {env.get('logical_cores', '?')} logical cores, "
            f"{env.get('memory_gb', '?')} GB; ONNX Runtime {env.get('versions', {}).get('onnxruntime', '?')} "
            f"profile '{ep.get('profile', '?')}'; baseline: {baseline}" + _llamacpp_build_line(report))


def _llamacpp_build_line(report: dict) -> str:
    """How the llama.cpp that measured the .gguf rows was built: compiled ISA features and CMAKE flags."""
    build = next((r["runner"]["build"] for r in report["results"] if (r.get("runner") or {}).get("build")), None)
    if build is None:
        return ""
    features = build.get("system_info", "?").replace("CPU : ", "").replace(" = 1", "").replace(" |", "").strip()
    flags = " ".join(build["cmake_args"]) if build.get("cmake_args") else "not recorded (not built by setup-llamacpp)"
    return f"\nllama.cpp {build.get('version', '?')}: compiled for {features}; CMAKE_ARGS: {flags}"


def varying_axis(results: list[dict]) -> str:
    """The plot's x axis: the workload key whose value changes across rows (else the first key)."""
    keys = list(dict.fromkeys(k for r in results for k in workload_of(r)))
    varying = [k for k in keys if len({workload_of(r).get(k) for r in results}) > 1]
    return (varying or keys)[0]


def plot(report: dict, output: str) -> None:
    """Latency curves (log-log) beside peak-memory bars, one series per model, over the workload that varies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    axis = varying_axis(report["results"])

    def x_of(row: dict):
        return workload_of(row).get(axis)

    series: dict[str, list[dict]] = {}
    for r in report["results"]:
        series.setdefault(r["model"], []).append(r)
    sizes = sorted({x_of(r) for r in report["results"] if x_of(r) is not None})
    names = display_names(series)
    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (model, rs) in enumerate(series.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        label = f"{names[model]} ({rs[0].get('method') or '?'})"
        ax_lat.plot([x_of(r) for r in ok], [r["latency_ms"]["median"] / 1000 for r in ok], "o-", label=label)
        mem = {x_of(r): r["peak_rss_mb"] for r in ok}
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(sizes))]
        ax_mem.bar(xs, [mem.get(n, 0) for n in sizes], width, label=label)
        for x, n in zip(xs, sizes):
            failed = next((r["status"] for r in rs if x_of(r) == n and r["status"] != "ok"), None)
            if failed:
                ax_mem.annotate(failed, (x, 0), ha="center", va="bottom", rotation=90, fontsize=8)
    label = axis_names(axis)[1]
    ax_lat.set(xscale="log", yscale="log", xlabel=label, ylabel="latency, median (s)", title="Latency")
    ax_lat.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured sizes
    ax_lat.set_xticks(sizes, [str(n) for n in sizes])
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=8)
    ax_mem.set(xlabel=label, ylabel="peak RSS above loaded model (MB)", title="Peak memory")
    ax_mem.set_xticks(range(len(sizes)), [str(n) for n in sizes])
    ax_mem.legend(fontsize=8)
    env = report.get("environment", {})
    fig.suptitle(f"{env.get('cpu', '')} · {env.get('logical_cores', '?')} cores", fontsize=9)
    save_figure(fig, output)


def write_json(report: dict, output: str) -> None:
    with atomic_output(output) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
