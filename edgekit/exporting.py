"""`export`: model spec -> checked ONNX file on disk, for every model kind (dense or with an edgekit op).

One path for all kinds: the family says what the graph takes and returns (`interface`), builds the torch
module (`prepare`), and names the workload of the check; ONNX Runtime must then match PyTorch on every
output before the file is written. The interface goes into the file's metadata, where `Session`,
`profile` and `quantize` read it.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import onnx
import torch

from edgekit.errors import EdgekitError, ExportParityError
from edgekit.exporters import sources
from edgekit.exporters.family import tidy
from edgekit.files import EXTERNAL_DATA_BYTES, atomic_output_group, save_weights, write_self_contained
from edgekit.interface import Interface
from edgekit.runtime_ops import DOMAIN
from edgekit.runtime_ops.attach import all_nodes, attach_functions
from edgekit.tasks import get_task

TOKENIZER = "edgekit.tokenizer"  # metadata: where the model's tokenizer lives (see sources.tokenizer_spec)


@dataclasses.dataclass
class ExportResult:
    path: str
    model: str
    task: str
    method: str
    options: dict
    check_workload: dict
    max_abs_error: float  # the worst output's, relative to nothing: see `tolerance`
    worst_output: str
    tolerance: float
    size_mb: float

    @property
    def check_tokens(self) -> int | None:
        return self.check_workload.get("seq_len")


def export(model: str, output: str, method: str | None = None, *, weights: str | None = None,
           tolerance: float | None = None, seed: int = 0, loaded: tuple | None = None,
           **options) -> ExportResult:
    """Export a model's graph with the chosen method (default: the family's baseline, e.g. dense) and check
    it against PyTorch before writing it.

    `options` are the method's op options (e.g. DHSA's budget_tokens, HiLo's alpha) and the family's graph
    options (an LLM's logits_to_keep and check_tokens). `loaded` reuses a `sources.load(model)` result:
    exporting one real model several ways loads it once (the caller then keeps it in memory throughout).
    Memory stays near one copy of the weights: they are streamed from the torch tensors to disk, and ONNX
    Runtime loads them only once the torch model is gone.
    """
    if tolerance is not None and not tolerance > 0:
        raise EdgekitError(f"the check tolerance (--atol) must be > 0, got {tolerance}")
    if loaded is None and model in sources.presets():  # bad options fail before the model is built
        family = sources.presets()[model][0]
        family.check_workload(**family.split_options(method, options)[1])
    with atomic_output_group(output) as folder:  # checked, then published
        written = folder / Path(output).name
        traced = trace(loaded or sources.load(model, weights=weights), method, seed, options, written,
                       release=loaded is None)
        limit = traced.family.tolerance if tolerance is None else tolerance
        tokenizer = sources.tokenizer_spec(model, weights)
        proto = write_model(traced.proto, traced.interface, written, {TOKENIZER: tokenizer} if tokenizer else {})
        worst, error = run_checks(proto, written, traced, limit)
        if data_file(written).stat().st_size <= EXTERNAL_DATA_BYTES:  # small enough for one file
            make_whole(proto, written)
        size = sum(f.stat().st_size for f in folder.glob(f"{written.name}*"))
    return ExportResult(str(output), traced.name, traced.family.task, traced.method, traced.op_options,
                        traced.workload, error, worst, limit, size / 1e6)


@dataclasses.dataclass
class Check:
    """One ONNX Runtime vs PyTorch comparison; PyTorch's side is computed while the torch model is loaded."""

    example: dict[str, np.ndarray]
    expected: list[np.ndarray]
    op: str | None = None  # the file is checked with these attributes on its `op` nodes (a path check)
    attributes: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Traced:
    """The torch side of an export: the ONNX graph (its weights already on disk) and the checks."""

    family: type
    name: str
    method: str
    op_options: dict
    workload: dict
    interface: Interface
    proto: onnx.ModelProto  # weights in `<name>.data`
    checks: list[Check]


def trace(loaded: tuple, method: str | None, seed: int, options: dict, path: Path, release: bool) -> Traced:
    """Export the graph, its weights streamed to `<path>.data`, and compute PyTorch's outputs for every
    check; with `release`, the torch model's tensors are freed after (nothing returned holds one)."""
    family, torch_model, name = loaded
    method = family.method(method).name  # None: the family's baseline
    op_options, graph_options = family.split_options(method, options)
    workload = family.check_workload(**graph_options)
    interface = dataclasses.replace(family.interface(torch_model, **graph_options), method=method,
                                    options=op_options, model=name, family=family.__name__)
    checks = path_checks(family, torch_model, method, op_options, graph_options, interface, seed)
    graph = family.prepare(torch_model, method, op_options, **graph_options)  # last: the model as exported
    example = interface.example_inputs(get_task(family.task).sizes(workload), seed)
    checks.insert(0, Check(example, pytorch_outputs(graph, interface, example)))
    proto = tidy(save_weights(family.to_onnx_ir(graph, interface, example), path), interface)
    if release:
        release_tensors(torch_model)
    return Traced(family, name, method, op_options, workload, interface, proto, checks)


def release_tensors(module: torch.nn.Module) -> None:
    """Empty a module's parameters and buffers in place, so their memory goes back before ONNX Runtime loads
    the written weights: dropping our references is not enough, as onnxscript's rewrite rules keep the last
    graph they matched, whose lifted inputs still point at the parameters."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype)


def path_checks(family, torch_model, method: str, op_options: dict, graph_options: dict,
                interface: Interface, seed: int) -> list[Check]:
    """Check the written graph's other paths too: the same file with shrunken op attributes, on a workload
    that takes the op's data-dependent branch (a 64-token check never reaches DHSA's sparse selection)."""
    chosen = family.method(method)
    if not chosen.path_check_options:
        return []
    options = {**op_options, **chosen.path_check_options}
    graph = family.prepare(torch_model, method, options, **graph_options)
    example = interface.example_inputs(get_task(family.task).sizes(chosen.path_check_workload), seed)
    return [Check(example, pytorch_outputs(graph, interface, example), chosen.op, dict(chosen.path_check_options))]


def write_model(proto: onnx.ModelProto, interface: Interface, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Write the exported model at `path` beside its weights, `<name>.data` (written by `trace`); returns
    the model proto, with its edgekit function bodies and metadata.

    The checks run this pair: ONNX Runtime maps the data file, where a one-file model is parsed whole
    and then copied tensor by tensor (about 2x the weights at once). A small model is made whole after.
    """
    gc.collect()  # the torch model is unreferenced now: free its weights before ONNX Runtime loads them
    proto = attach_functions(proto)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        **interface.to_metadata(), **metadata})
    onnx.save(proto, str(path))
    return proto


def make_whole(proto: onnx.ModelProto, path: Path) -> None:
    """Replace the checked pair at `path` by one file holding the same graph and weights inline."""
    whole = path.with_name(f"whole-{path.name}")
    write_self_contained(proto, whole)
    data_file(path).unlink()
    whole.replace(path)


def data_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.data")


def run_checks(proto: onnx.ModelProto, written: Path, traced: Traced, tolerance: float) -> tuple[str, float]:
    """Run every check (the file as written, then its path-check variants); the first one's result."""
    results = []
    for check in traced.checks:
        path = written
        if check.op:  # beside the written model: it shares its external data
            path = written.with_name("path-check.onnx")
            onnx.save(with_op_attributes(proto, check.op, check.attributes), str(path))
        results.append(check_parity(path, traced.interface, check, tolerance))
    return results[0]


def with_op_attributes(proto: onnx.ModelProto, op_name: str, attrs: dict) -> onnx.ModelProto:
    """A copy of the model whose `op_name` nodes (anywhere) carry `attrs` instead."""
    variant = onnx.ModelProto()
    variant.CopyFrom(proto)
    for node in all_nodes(variant):
        if node.domain == DOMAIN and node.op_type == op_name:
            kept = [a for a in node.attribute if a.name not in attrs]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute(k, v) for k, v in attrs.items()])
    return variant


def pytorch_outputs(graph: torch.nn.Module, interface: Interface, example: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = graph(*(torch.from_numpy(example[s.name]) for s in interface.inputs))
    return [t.numpy() for t in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]


def _check_profile():
    """The cpu profile without weight prepacking: a check runs once, and prepacked copies of the MatMul
    weights would hold them twice (ONNX Runtime maps the data file, so the weights are read, not copied)."""
    from edgekit.ep_profiles import load_profile

    cpu = load_profile("cpu")
    entries = {**cpu.session.config_entries, "session.disable_prepacking": "1"}
    return cpu.model_copy(update={"session": cpu.session.model_copy(update={"config_entries": entries})})


def check_parity(model: Path, interface: Interface, check: Check, tolerance: float) -> tuple[str, float]:
    """Every output of ONNX Runtime vs PyTorch on the check's example: |diff| <= tolerance * max(1, max |torch|).

    Returns the output with the largest relative error and its max |diff|.
    """
    from edgekit.session import Session

    got = Session(model, ep=_check_profile()).run(check.example)
    worst, worst_ratio, worst_error = "", -1.0, 0.0
    for spec, want in zip(interface.outputs, check.expected):
        error = float(np.abs(got[spec.name].astype(np.float64) - want).max()) if want.size else 0.0
        limit = tolerance * max(1.0, float(np.abs(want).max()) if want.size else 0.0)
        if not error <= limit:
            raise ExportParityError(spec.name, error, limit)
        if error / limit > worst_ratio:
            worst, worst_ratio, worst_error = spec.name, error / limit, error
    return worst, worst_error
