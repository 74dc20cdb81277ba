"""CI gates: compare current profile results with a baseline and judge regressions past thresholds.

Rows match by (model file name, method, workload), so a baseline measured in another folder still
matches. The noise rule: a metric regresses when its median moved past the threshold AND by more than
the two runs' spreads added together (spread = the interquartile range of the timed runs when there are
4 or more, else p90 - min; 0 for a single figure such as peak memory); a move past the threshold but
inside that combined spread is "within noise".
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.report import workload_label, workload_of

EXIT_REGRESSION = 3  # a metric regressed past its threshold
EXIT_MISSING = 4  # a baseline row has no successful current row

# metric -> how to read (value, spread) from an ok row; higher is worse for every metric here
METRICS = {
    "latency": lambda r: (r["latency_ms"]["median"], _spread(r["latency_ms"])),
    "memory": lambda r: (r["peak_rss_mb"], 0.0),
}
UNITS = {"latency": "ms", "memory": "MB"}
_THRESHOLD = re.compile(r"^(?P<metric>[a-z]+):\+?(?P<percent>\d+(\.\d+)?)%$")


class GateError(EdgekitError):
    """A --fail-on threshold that does not parse."""


@dataclasses.dataclass(frozen=True)
class Change:
    key: tuple  # (model file name, method, workload label)
    metric: str
    baseline: float
    current: float
    spread: float  # baseline spread + current spread
    threshold: float  # percent

    @property
    def percent(self) -> float:
        return 100.0 * (self.current - self.baseline) / self.baseline if self.baseline else 0.0

    @property
    def verdict(self) -> str:
        if self.percent <= self.threshold:
            return "ok"
        return "within noise" if self.current - self.baseline <= self.spread else "regression"


@dataclasses.dataclass
class Comparison:
    changes: list[Change]
    missing: list[tuple]  # keys of baseline rows the current results lack (or that failed now)

    @property
    def exit_code(self) -> int:
        """Regressions first: they are what a CI run must not merge; then missing rows; else 0."""
        if any(c.verdict == "regression" for c in self.changes):
            return EXIT_REGRESSION
        return EXIT_MISSING if self.missing else 0


def _spread(latency: dict) -> float:
    """IQR of the runs (robust to one slow outlier) when there are enough, else p90 - min."""
    runs = latency.get("runs") or []
    if len(runs) >= 4:
        q1, _, q3 = statistics.quantiles(runs, n=4)
        return q3 - q1
    return latency["p90"] - latency["min"] if latency.get("min") is not None else 0.0


def parse_thresholds(text: str) -> dict[str, float]:
    """'latency:+10%,memory:+10%' -> {"latency": 10.0, "memory": 10.0}; anything else is one-line error."""
    thresholds = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _THRESHOLD.match(part)
        if not match or match["metric"] not in METRICS:
            raise GateError(f"--fail-on wants METRIC:+N% with METRIC one of {', '.join(METRICS)} "
                            f"(e.g. latency:+10%,memory:+10%), got '{part}'")
        thresholds[match["metric"]] = float(match["percent"])
    if not thresholds:
        raise GateError(f"--fail-on names no threshold: '{text}'")
    return thresholds


def row_key(row: dict) -> tuple:
    return (Path(row["model"]).name, row.get("method"), json.dumps(workload_of(row), sort_keys=True))


def compare(current: dict, baseline: dict, thresholds: dict[str, float]) -> Comparison:
    """Every thresholded metric of every baseline row that was ok, against the matching current row."""
    now = {row_key(r): r for r in current["results"] if r["status"] == "ok"}
    changes, missing = [], []
    for base in (r for r in baseline["results"] if r["status"] == "ok"):
        cur = now.get(row_key(base))
        if cur is None:
            missing.append(_label(base))
            continue
        for metric, percent in thresholds.items():
            (b, b_spread), (c, c_spread) = METRICS[metric](base), METRICS[metric](cur)
            changes.append(Change(_label(base), metric, b, c, b_spread + c_spread, percent))
    return Comparison(changes, missing)


def _label(row: dict) -> tuple:
    return (Path(row["model"]).name, row.get("method") or "—", workload_label(row))


def markdown(comparison: Comparison) -> str:
    """What moved, per model and workload: baseline -> current, change %, combined spread, verdict."""
    lines = ["| model | method | workload | metric | baseline | current | change | spread | verdict |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for c in comparison.changes:
        unit = UNITS[c.metric]
        verdict = f"**{c.verdict}**" if c.verdict == "regression" else c.verdict
        lines.append(f"| {' | '.join(c.key)} | {c.metric} | {c.baseline:.2f} {unit} | {c.current:.2f} {unit} | "
                     f"{c.percent:+.1f}% (limit +{c.threshold:g}%) | ±{c.spread:.2f} {unit} | {verdict} |")
    lines += [f"| {' | '.join(key)} | — | — | missing | — | — | **missing** |" for key in comparison.missing]
    return "\n".join(lines) + "\n\n" + _verdict_line(comparison)


def _verdict_line(comparison: Comparison) -> str:
    regressions = sum(c.verdict == "regression" for c in comparison.changes)
    noise = sum(c.verdict == "within noise" for c in comparison.changes)
    return (f"gate: {regressions} regression(s), {noise} within noise, {len(comparison.missing)} baseline row(s) "
            f"missing (exit {comparison.exit_code}); a change counts only past its threshold and past the "
            f"combined spread of both runs (IQR, or p90 - min under 4 runs)")
