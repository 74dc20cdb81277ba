"""`compile_model`: ahead-of-time ONNX Runtime graph optimization for one execution provider, with a placement report.

ONNX Runtime optimizes the graph for the profile's provider and level and saves the result
(`SessionOptions.optimized_model_filepath`), as ONNX or in ORT format (for mobile / minimal builds).
The same session runs the check inputs once with profiling on: its per-node events say which provider ran
each node, so the report counts nodes per provider and op type, and `strict_ep` can refuse CPU fallback.
ORT inlines model-local functions when it optimizes, so a compiled model holds the edgekit ops' bodies
as standard nodes; it keeps the model's metadata, so `Session` and `profile` take it like the original.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

import onnxruntime as ort

from edgekit.agreement import Agreement, agreement_feeds, check_sizes, compare
from edgekit.ep_profiles import Profile, load_profile
from edgekit.errors import CompileError, ExecutionProviderError, PlacementError, first_line
from edgekit.files import EXTERNAL_DATA_BYTES, atomic_output_group, check_writable
from edgekit.session import Session, file_bytes, load_model

FORMATS = ("onnx", "ort")
CPU = "CPUExecutionProvider"


@dataclasses.dataclass
class Placement:
    """Executed nodes by provider and op type (from ORT's profile: nodes of untaken If branches are absent)."""

    nodes: dict[str, dict[str, int]]  # provider -> op type -> nodes
    names: dict[str, list[str]]  # provider -> node names

    def off(self, provider: str) -> dict[str, int]:
        """Op type -> nodes that ran on another provider than `provider` (CPU fallback)."""
        counts = collections.Counter()
        for other, ops in self.nodes.items():
            if other != provider:
                counts.update(ops)
        return dict(counts)

    def describe(self, provider: str) -> list[str]:
        lines = [f"{p}: {sum(ops.values())} nodes ({_ops(ops)})" for p, ops in self.nodes.items()]
        off = self.off(provider)
        lines.append(f"fell back from {provider}: {sum(off.values())} nodes ({_ops(off)})" if off
                     else f"fell back from {provider}: none")
        return lines


@dataclasses.dataclass
class CompileResult:
    path: str
    source: str
    profile: str
    provider: str
    format: str
    optimization_level: str
    size_mb: float
    placement: Placement
    agreement: Agreement
    notes: list[str]


def compile_model(model: str | os.PathLike, output: str | os.PathLike, ep: str | None = "cpu", *,
                  profile_file: str | os.PathLike | None = None, fmt: str = "onnx", strict_ep: bool = False,
                  seed: int = 0) -> CompileResult:
    """Optimize `model` for the profile's provider, save it as `fmt`, report placement and agreement.

    `ep` names a profile (profiles/<ep>.toml); `profile_file` gives one instead (`ep` None, or naming a
    profile of the same provider). `strict_ep`: no CPU fallback; nodes the provider cannot run are named in
    a PlacementError and nothing is written.
    """
    profile = _profile(ep, profile_file)
    providers = profile.providers()[: 1 if strict_ep else None]  # unknown or unavailable provider: one line
    _check_output(output, fmt)
    source = load_model(model, load_external_data=False)  # not an ONNX model: one line
    reference = Session(model)
    sizes = check_sizes(reference)
    feeds, inputs = agreement_feeds(reference, sizes, seed)
    with atomic_output_group(output) as folder:
        target = folder / Path(output).name
        large = fmt == "onnx" and file_bytes(model, source) > EXTERNAL_DATA_BYTES
        placement = _optimize(_Plan(Path(model), target, profile, providers, fmt, strict_ep, large), feeds[0])
        if strict_ep:
            _check_strict(placement, profile.provider)
        agreement = compare(reference, Session(target, ep=profile), feeds, sizes, inputs)
        size = sum(f.stat().st_size for f in (target, Path(f"{target}.data")) if f.exists())
    return CompileResult(str(output), str(model), profile.name, profile.provider, fmt,
                         profile.session.graph_optimization_level, size / 1e6, placement, agreement,
                         _notes(source, profile, fmt))


def _profile(ep: str | None, profile_file: str | os.PathLike | None) -> Profile:
    if profile_file is None:
        return load_profile(ep or "cpu")
    given = load_profile(profile_file)
    named = load_profile(ep) if ep else given
    if given.provider != named.provider:
        raise ExecutionProviderError(f"{profile_file} is a profile for {given.provider}, not for --ep {ep} "
                                     f"({named.provider})")
    return given


def _check_output(output: str | os.PathLike, fmt: str) -> None:
    if fmt not in FORMATS:
        raise CompileError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    if fmt == "ort" and Path(output).suffix != ".ort":
        raise CompileError(f"an ORT-format model must be named *.ort (ONNX Runtime picks the format by the "
                           f"extension), got {output}")
    check_writable(output)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One optimization: source, where ORT saves the result, for which provider, in which format."""

    model: Path
    target: Path
    profile: Profile
    providers: list
    fmt: str
    strict: bool
    large: bool  # initializers go to `<target>.data`

    def options(self) -> ort.SessionOptions:
        options = self.profile.session_options()
        options.optimized_model_filepath = str(self.target)
        options.enable_profiling = True
        options.profile_file_prefix = str(self.target.parent / "placement")
        if self.fmt == "ort":
            options.add_session_config_entry("session.save_model_format", "ORT")
        if self.large:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{self.target.name}.data")
        if self.strict and self.profile.provider != CPU:  # ORT refuses the entry beside an explicit CPU EP
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            options.log_severity_level = 4  # ORT logs the refusal itself; the PlacementError says it once
        return options


def _optimize(plan: _Plan, feed: dict) -> Placement:
    """One session optimizes and saves the model, then runs one input with profiling on: the placement."""
    provider = plan.profile.provider
    try:
        session = ort.InferenceSession(str(plan.model), plan.options(), providers=plan.providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        if plan.strict:  # ask a fallback-allowed session which nodes the provider could not take
            _check_strict(_optimize(dataclasses.replace(plan, strict=False), feed), provider)
        raise CompileError(f"ONNX Runtime cannot optimize {plan.model} for {provider}: {first_line(exc)}") from None
    if provider not in session.get_providers():
        raise ExecutionProviderError(f"{provider} did not start (no usable device?); ONNX Runtime would run on "
                                     f"{', '.join(session.get_providers())}")
    try:
        session.run(None, feed)
    except Exception as exc:  # noqa: BLE001
        raise CompileError(f"the optimized model fails on a check input: {first_line(exc)}") from None
    return _placement(session.end_profiling())


def _placement(profile_json: str) -> Placement:
    """Unique executed nodes per provider, from the `"provider"` of each node's kernel-time event."""
    events = json.loads(Path(profile_json).read_text())
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            args = event.get("args", {})
            seen[event["name"].removesuffix("_kernel_time")] = (args.get("provider", "?"), args.get("op_name", "?"))
    nodes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    names: dict[str, list[str]] = collections.defaultdict(list)
    for name, (provider, op) in seen.items():
        nodes[provider][op] += 1
        names[provider].append(name)
    return Placement({p: dict(c.most_common()) for p, c in nodes.items()}, dict(names))


def _check_strict(placement: Placement, provider: str) -> None:
    off = placement.off(provider)
    if off:
        names = [n for p, ns in placement.names.items() if p != provider for n in ns]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise PlacementError(f"--strict-ep: {sum(off.values())} nodes cannot run on {provider} ({_ops(off)}): "
                             f"{shown}; nothing written")


def _notes(source, profile: Profile, fmt: str) -> list[str]:
    notes = []
    if source.functions:
        ops = sorted({f"{f.domain}.{f.name}" for f in source.functions})
        notes.append(f"{', '.join(ops)}: ONNX Runtime inlined the function bodies while optimizing; the compiled "
                     "model holds them as standard nodes (metadata kept)")
    if profile.session.graph_optimization_level == "all" and profile.provider == CPU:
        notes.append("optimized at level 'all' on this CPU: the file may use layouts specific to it "
                     "(ONNX Runtime's warning); compile on the device that runs it")
    if fmt == "ort":
        notes.append("ORT format: loads in minimal (mobile) ONNX Runtime builds, not in other ONNX tools")
    return notes


def _ops(counts: dict[str, int], limit: int = 8) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{op} {n}" for op, n in items[:limit]) + (", ..." if len(items) > limit else "")
