"""Tune llama.cpp the way a user tunes it with llama-bench, so the baseline is llama.cpp at its best.

A sweep tries settings of threads, n_batch/n_ubatch, flash attention, KV-cache type and mmap on one GGUF
at one prompt length (each trial a fresh worker process, like every profile point) and keeps the fastest
median. `axes` (the default) goes axis by axis from llama.cpp's defaults, keeping the best so far before
the next axis (1 + the sum of the axes' other values trials); `grid` tries every combination.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Literal

import psutil

from edgekit.errors import ProfileError
from edgekit.llamacpp import KV_TYPES, MAX_BATCH, MAX_UBATCH, LlamaCppSettings

STRATEGIES = ("axes", "grid")
AXES = ("threads", "batch", "flash_attn", "kv_type", "mmap")  # the order `axes` tunes them in
BATCHES = ((512, 512), (2048, 512), (2048, 2048))
ON_OFF = {"on": True, "off": False, "1": True, "0": False, "true": True, "false": False}


@dataclass(frozen=True)
class SweepSpace:
    """The values a sweep may try on each axis; the first of each (or llama.cpp's default) is the start."""

    threads: tuple[int, ...] = field(default_factory=lambda: tuple(range(1, (psutil.cpu_count() or 1) + 1)))
    batch: tuple[tuple[int, int], ...] = BATCHES  # (n_batch, n_ubatch)
    flash_attn: tuple[bool, ...] = (True, False)
    kv_type: tuple[str, ...] = ("f16", "q8_0")
    mmap: tuple[bool, ...] = (False, True)
    strategy: Literal["axes", "grid"] = "axes"

    def __post_init__(self):
        for axis in AXES:
            if not getattr(self, axis):
                raise ProfileError(f"llama.cpp sweep axis '{axis}' has no values")
        if self.strategy not in STRATEGIES:
            raise ProfileError(f"unknown sweep strategy '{self.strategy}' (choose {', '.join(STRATEGIES)})")
        for n_batch, n_ubatch in self.batch:
            if min(n_batch, n_ubatch) < 1 or n_ubatch > n_batch:
                raise ProfileError(f"llama.cpp sweep batch {n_batch}/{n_ubatch}: want 1 <= n_ubatch <= n_batch")
        for kv in self.kv_type:
            if kv not in KV_TYPES:
                raise ProfileError(f"unknown KV-cache type '{kv}' (choose {', '.join(KV_TYPES)})")
        if min(self.threads) < 1:
            raise ProfileError(f"llama.cpp sweep threads must be >= 1, got {min(self.threads)}")

    def start(self) -> dict:
        """Where `axes` begins: llama.cpp's defaults (physical cores, 2048/512, fa, f16, no mmap) when listed."""
        default = {"threads": psutil.cpu_count(logical=False) or 1, "batch": (MAX_BATCH, MAX_UBATCH),
                   "flash_attn": True, "kv_type": "f16", "mmap": False}
        return {a: default[a] if default[a] in getattr(self, a) else getattr(self, a)[0] for a in AXES}

    def describe(self) -> dict:
        """The space as the results file records it."""
        return {"strategy": self.strategy, **{a: [list(v) if isinstance(v, tuple) else v for v in getattr(self, a)]
                                              for a in AXES}}

    def trial_count(self) -> int:
        if self.strategy == "grid":
            count = 1
            for axis in AXES:
                count *= len(set(getattr(self, axis)))
            return count
        return 1 + sum(len(set(getattr(self, a))) - 1 for a in AXES)


def settings_of(point: dict) -> LlamaCppSettings:
    """One point of the space ({axis: value}) as runner settings."""
    n_batch, n_ubatch = point["batch"]
    return LlamaCppSettings(threads=point["threads"], n_batch=n_batch, n_ubatch=n_ubatch,
                            flash_attn=point["flash_attn"], kv_type=point["kv_type"], mmap=point["mmap"])


def parse_axis(text: str) -> tuple[str, tuple]:
    """'threads=1,2' / 'batch=512/512,2048/512' / 'flash_attn=on,off' / 'kv_type=f16,q8_0' / 'mmap=off'."""
    axis, sep, values = text.partition("=")
    axis = {"fa": "flash_attn", "kv": "kv_type"}.get(axis.strip(), axis.strip())
    if not sep or axis not in AXES:
        raise ProfileError(f"--llamacpp-sweep-axis wants AXIS=V1,V2 with AXIS one of {', '.join(AXES)}; "
                           f"got '{text}'")
    items = [v.strip().lower() for v in values.split(",") if v.strip()]
    if not items:
        raise ProfileError(f"--llamacpp-sweep-axis {axis} has no values: '{text}'")
    try:
        return axis, tuple(dict.fromkeys(_PARSERS[axis](v) for v in items))
    except (ValueError, KeyError):
        raise ProfileError(f"--llamacpp-sweep-axis: bad {axis} values '{values}' ({_FORMS[axis]})") from None


def _batch(value: str) -> tuple[int, int]:
    n_batch, _, n_ubatch = value.partition("/")
    pair = (int(n_batch), int(n_ubatch or n_batch))
    if min(pair) < 1 or pair[1] > pair[0]:
        raise ValueError(value)
    return pair


def _threads(value: str) -> int:
    if int(value) < 1:
        raise ValueError(value)
    return int(value)


def _kv(value: str) -> str:
    if value not in KV_TYPES:
        raise ValueError(value)
    return value


_PARSERS = {"threads": _threads, "batch": _batch, "flash_attn": lambda v: ON_OFF[v], "kv_type": _kv,
            "mmap": lambda v: ON_OFF[v]}
_FORMS = {"threads": "integers >= 1", "batch": "N_BATCH/N_UBATCH pairs with N_UBATCH <= N_BATCH, e.g. 2048/512",
          "flash_attn": "on / off", "kv_type": ", ".join(KV_TYPES), "mmap": "on / off"}


def space_from(axes: list[str] | None, strategy: str = "axes", threads: int | None = None) -> SweepSpace:
    """A sweep space from `--llamacpp-sweep-axis` texts: each replaces that axis's default values; a profile's
    fixed `threads` (--threads) fixes llama.cpp's too, unless a threads axis is given."""
    chosen = dict(parse_axis(text) for text in axes or [])
    if threads is not None:
        chosen.setdefault("threads", (threads,))
    return SweepSpace(**chosen, strategy=strategy)


def points(space: SweepSpace, best: dict, axis: str) -> list[dict]:
    """The points `axes` tries on one axis: the best so far with that axis set to each other value."""
    return [{**best, axis: v} for v in dict.fromkeys(getattr(space, axis)) if v != best[axis]]


def best_trial(trials: list[dict]) -> dict | None:
    """The fastest trial that ran (lowest median); the first of equals wins."""
    ok = [t for t in trials if t["status"] == "ok"]
    return min(ok, key=lambda t: t["median_ms"]) if ok else None


Measure = Callable[[LlamaCppSettings], dict]  # settings -> a profile row (status, latency_ms, ...)


def tune(space: SweepSpace, measure: Measure, on_trial: Callable[[LlamaCppSettings], None] | None = None) -> dict:
    """Run the sweep; returns {strategy, trials: [{axis, settings, status, median_ms, ...}], chosen, rows}.

    `rows` (not stored) are the measured profile rows by trial index, so the winner's own measurement can
    stand as the result at the length it was tuned at.
    """
    trials, rows = [], []

    def run(point: dict, axis: str) -> None:
        settings = settings_of(point)
        if on_trial:
            on_trial(settings)
        row = measure(settings)
        rows.append(row)
        trials.append(_trial(axis, settings, row))

    if space.strategy == "grid":
        for values in itertools.product(*(dict.fromkeys(getattr(space, a)) for a in AXES)):
            run(dict(zip(AXES, values)), "grid")
    else:
        best = space.start()
        run(best, "start")
        for axis in AXES:
            for point in points(space, best, axis):
                run(point, axis)
            winner = best_trial(trials)
            best = _point(winner["settings"]) if winner else best
    winner = best_trial(trials)
    return {"strategy": space.strategy, "trials": trials, "chosen": winner["settings"] if winner else None,
            "rows": rows, "winner": trials.index(winner) if winner else None}


def _trial(axis: str, settings: LlamaCppSettings, row: dict) -> dict:
    """What the results file keeps of one trial."""
    trial = {"axis": axis, "settings": settings.model_dump(), "status": row["status"]}
    if row["status"] == "ok":
        trial["median_ms"] = row["latency_ms"]["median"]
        trial["peak_rss_mb"] = row.get("peak_rss_mb")
    else:
        trial["error"] = row.get("error")
    return trial


def _point(settings: dict) -> dict:
    return {"threads": settings["threads"], "batch": (settings["n_batch"], settings["n_ubatch"]),
            "flash_attn": settings["flash_attn"], "kv_type": settings["kv_type"], "mmap": settings["mmap"]}
