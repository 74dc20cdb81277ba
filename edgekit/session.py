"""`Session`: run any exported edgekit model (edgekit ops included) on an execution-provider profile."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from edgekit.errors import ExecutionProviderError, ModelLoadError, ShapeError, first_line

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


@dataclasses.dataclass(frozen=True)
class Profile:
    """An execution-provider profile from profiles/<name>.toml."""

    name: str
    provider: str
    description: str = ""
    fallback: tuple[str, ...] = ()
    session: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    provider_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def session_options(self, threads: int | None = None) -> ort.SessionOptions:
        cfg = dict(self.session)
        so = ort.SessionOptions()
        so.graph_optimization_level = _OPT_LEVELS[cfg.get("graph_optimization_level", "all")]
        so.intra_op_num_threads = int(threads if threads is not None else cfg.get("intra_op_num_threads", 0))
        so.inter_op_num_threads = int(cfg.get("inter_op_num_threads", 1))
        so.execution_mode = _EXEC_MODES[cfg.get("execution_mode", "sequential")]
        so.enable_cpu_mem_arena = bool(cfg.get("enable_cpu_mem_arena", True))
        so.enable_mem_pattern = bool(cfg.get("enable_mem_pattern", True))
        so.log_severity_level = 3  # errors only: warnings would drown the CLI's output
        return so

    def providers(self) -> list:
        available = ort.get_available_providers()
        if self.provider not in available:
            raise ExecutionProviderError(
                f"execution provider '{self.name}' ({self.provider}) is not available in this onnxruntime "
                f"build; available: {', '.join(available)}"
            )
        return [(self.provider, dict(self.provider_options))] + [p for p in self.fallback if p in available]


def profiles_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_PROFILES", importlib.resources.files("edgekit.profiles")))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_profile(name: str) -> Profile:
    """Read profiles/<name>.toml; an unknown name lists the known ones."""
    path = profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise ExecutionProviderError(
            f"unknown execution-provider profile '{name}'; known: {', '.join(available_profiles())}"
        )
    data = tomllib.loads(path.read_text())
    return Profile(
        name=data.get("name", name),
        provider=data["provider"],
        description=data.get("description", ""),
        fallback=tuple(data.get("fallback", ())),
        session=data.get("session", {}),
        provider_options=data.get("provider_options", {}),
    )


class Session:
    """An ONNX Runtime session on an edgekit profile, with one-line errors for bad models and inputs.

    >>> s = Session("model.onnx", ep="cpu")
    >>> logits = s.run({"input_ids": ids})["logits"]
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, ep: str = "cpu", threads: int | None = None):
        self.profile = load_profile(ep)
        options = self.profile.session_options(threads)
        providers = self.profile.providers()
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else _checked_path(model)
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {_name(model)}: {first_line(exc)}") from None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; returns {output name: array}. Wrong names or shapes raise ShapeError."""
        missing = sorted(set(self.input_names) - set(feeds))
        if missing:
            raise ShapeError(f"missing model input(s): {', '.join(missing)}")
        names = outputs or self.output_names
        try:
            values = self._session.run(names, dict(feeds))
        except Exception as exc:
            raise ShapeError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from None
        return dict(zip(names, values))


def _checked_path(model: str | os.PathLike) -> str:
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return str(path)


def _name(model) -> str:
    return "the in-memory model" if isinstance(model, onnx.ModelProto) else str(model)
