"""Schemas of the `edgekit eval` results files (pydantic), checked when written and when read back.

`edgekit report --passkey FILE` takes `edgekit passkey` and `edgekit eval retrieval` files alike: both have a
summary of (method, seq_len, found, total) rows, which the accuracy-vs-speed chart plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import ProfileError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PplRow(_Open):
    model: str
    method: str
    budget: Optional[int] = None
    seq_len: int
    status: Literal["ok", "error"]
    windows: int
    nll: Optional[float] = None
    ppl: Optional[float] = None
    tokens: Optional[int] = None
    error: Optional[str] = None


class PplSummary(_Open):
    model: str
    method: str
    budget: Optional[int] = None
    seq_len: int
    ppl: Optional[float] = None
    ratio_to_dense: Optional[float] = None


class PerplexityFile(_Open):
    kind: Literal["perplexity"]
    results: list[PplRow]
    summary: list[PplSummary]
    settings: dict
    environment: dict = {}


class RetrievalRow(_Open):
    model: str
    method: str
    budget: Optional[int] = None
    task: str
    seq_len: int
    index: int
    status: Literal["ok", "error"]
    correct: bool
    parts_correct: int
    parts: int
    error: Optional[str] = None


class AccuracySummary(_Open):
    """One (model, length[, task, budget]) point: what the accuracy chart needs (passkey files have these)."""

    model: str
    method: str
    seq_len: int
    found: int
    total: int
    task: str = "passkey"
    budget: Optional[int] = None


class RetrievalSummary(AccuracySummary):
    accuracy: float
    partial: float
    ratio_to_dense: Optional[float] = None
    partial_ratio_to_dense: Optional[float] = None


class RetrievalFile(_Open):
    kind: Literal["retrieval"]
    results: list[RetrievalRow]
    summary: list[RetrievalSummary]
    settings: dict
    environment: dict = {}


class AccuracyFile(_Open):
    """A passkey or retrieval results file, as far as the report's accuracy chart reads it."""

    summary: list[AccuracySummary]


SCHEMAS = {"perplexity": PerplexityFile, "retrieval": RetrievalFile}


def validate(data: dict) -> dict:
    """The results as written by `edgekit eval`; a mismatch is a bug, raised as one line."""
    try:
        SCHEMAS[data["kind"]].model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{data['kind']} results do not match their schema: {exc.errors()[0]['msg']} at "
                           f"{'.'.join(map(str, exc.errors()[0]['loc']))}") from None
    return data


def write(data: dict, path: str) -> None:
    from edgekit.report import write_json

    write_json(validate(data), path)


def load_accuracy(path: str) -> dict:
    """A `passkey --json` or `eval retrieval --json` file (for the accuracy-vs-speed chart)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read accuracy results {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), list):
        raise ProfileError(f"{path} is not an edgekit passkey or retrieval results file (no 'summary')")
    if data.get("kind") == "perplexity":
        raise ProfileError(f"{path} holds perplexity results; the accuracy chart takes passkey or retrieval results")
    try:
        AccuracyFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ProfileError(f"{path}: summary row {error['loc'][1] + 1 if len(error['loc']) > 1 else '?'}: "
                           f"{'.'.join(map(str, error['loc'][2:]))} {error['msg'].lower()}") from None
    return data
