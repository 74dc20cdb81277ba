"""Execution-provider profiles: profiles/<name>.toml, validated when loaded (pydantic).

An unknown key or a bad value is an error that names itself, so a typo in a CI device profile cannot
silently fall back to a default.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort
import pydantic

from edgekit.errors import ExecutionProviderError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


class SessionSettings(pydantic.BaseModel):
    """ONNX Runtime session options a profile may set."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_num_threads: int = pydantic.Field(0, ge=0)  # 0: ONNX Runtime picks one per physical core
    inter_op_num_threads: int = pydantic.Field(1, ge=0)
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    # ONNX Runtime session config entries (SessionOptions.add_session_config_entry), e.g.
    # "session.intra_op_thread_affinities" = "1;2": where each intra-op thread but the caller's may run
    config_entries: dict[str, str] = {}


class Profile(pydantic.BaseModel):
    """An execution-provider profile from profiles/<name>.toml."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str
    description: str = ""
    fallback: tuple[str, ...] = ()
    # the weights' precision a model must have to run under this profile (`edgekit quantize --precision`
    # writes it as edgekit.precision; an unquantized export is fp32); "any" takes every model
    precision: Literal["any", "fp32", "fp16", "int8", "int8-static", "int8-block", "int4"] = "any"
    session: SessionSettings = SessionSettings()
    provider_options: dict[str, Any] = {}

    def session_options(self, threads: int | None = None) -> ort.SessionOptions:
        cfg = self.session
        so = ort.SessionOptions()
        so.graph_optimization_level = _OPT_LEVELS[cfg.graph_optimization_level]
        so.intra_op_num_threads = int(threads if threads is not None else cfg.intra_op_num_threads)
        so.inter_op_num_threads = cfg.inter_op_num_threads
        so.execution_mode = _EXEC_MODES[cfg.execution_mode]
        so.enable_cpu_mem_arena = cfg.enable_cpu_mem_arena
        so.enable_mem_pattern = cfg.enable_mem_pattern
        for key, value in cfg.config_entries.items():
            so.add_session_config_entry(key, value)
        # ONNX Runtime's own log (even its errors, which edgekit reports as one line) only when asked for
        so.log_severity_level = 2 if os.environ.get("EDGEKIT_ORT_LOG") else 4
        return so

    def providers(self) -> list:
        available = ort.get_available_providers()
        if self.provider not in available:
            raise ExecutionProviderError(
                f"execution provider '{self.name}' ({self.provider}) is not available in this onnxruntime "
                f"build; available: {', '.join(available)}"
            )
        return [(self.provider, dict(self.provider_options))] + [p for p in self.fallback if p in available]


    def check_precision(self, model: str, precision: str | None) -> None:
        """A profile for fp16 weights fed an fp32 model would measure the wrong thing: refuse, say how to fix."""
        precision = precision or "fp32"
        if self.precision not in ("any", precision):
            raise ExecutionProviderError(
                f"profile '{self.name}' expects {self.precision} models, but {model} is {precision}: "
                f"run `edgekit quantize {model} -o OUT.onnx --precision {self.precision}` first")


def profiles_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_PROFILES", importlib.resources.files("edgekit.profiles")))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_profile(name: str | os.PathLike) -> Profile:
    """Read and validate profiles/<name>.toml, or a profile file given by path (`*.toml`); an unknown name
    lists the known ones."""
    given = Path(name)
    path = given if given.suffix == ".toml" else profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise ExecutionProviderError(f"profile file not found: {given}" if given.suffix == ".toml" else
                                     f"unknown execution-provider profile '{name}'; known: "
                                     f"{', '.join(available_profiles())}")
    try:
        data = tomllib.loads(path.read_text())
        return Profile(**{"name": path.stem, **data})
    except tomllib.TOMLDecodeError as exc:
        raise ExecutionProviderError(f"{path}: not valid TOML: {exc}") from None
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(map(str, problem["loc"]))
        raise ExecutionProviderError(f"{path}: '{where}': {problem['msg']}") from None
