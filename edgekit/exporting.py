"""`export`: model spec -> checked ONNX file on disk, for every model kind (dense or with an edgekit op).

One path for all kinds: the family says what the graph takes and returns (`interface`), builds the torch
module (`prepare`), and names the workload of the check; ONNX Runtime must then match PyTorch on every
output before the file is written. The interface goes into the file's metadata, where `Session`,
`profile` and `quantize` read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import torch

from edgekit.errors import EdgekitError, ExportParityError
from edgekit.exporters import sources
from edgekit.files import EXTERNAL_DATA_BYTES, atomic_output_group, save_onnx
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
    exporting one real model several ways loads it once.
    """
    if tolerance is not None and not tolerance > 0:
        raise EdgekitError(f"the check tolerance (--atol) must be > 0, got {tolerance}")
    if loaded is None and model in sources.presets():  # bad options fail before the model is built
        family = sources.presets()[model][0]
        family.check_workload(**family.split_options(method, options)[1])
    family, torch_model, name = loaded or sources.load(model, weights=weights)
    method = family.method(method).name  # None: the family's baseline
    op_options, graph_options = family.split_options(method, options)
    workload = family.check_workload(**graph_options)
    interface = dataclasses.replace(family.interface(torch_model, **graph_options), method=method,
                                    options=op_options, model=name, family=family.__name__)
    graph = family.prepare(torch_model, method, op_options, **graph_options)
    example = interface.example_inputs(get_task(family.task).sizes(workload), seed)
    proto = attach_functions(family.to_onnx(graph, interface, example))
    tokenizer = sources.tokenizer_spec(model, weights)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        **interface.to_metadata(), **({TOKENIZER: tokenizer} if tokenizer else {})})
    limit = family.tolerance if tolerance is None else tolerance
    with atomic_output_group(output) as folder:  # the check runs the file as written, then it is published
        written = folder / Path(output).name
        save_onnx(proto, written, external=proto.ByteSize() > EXTERNAL_DATA_BYTES)
        worst, error = check_parity(written, graph, interface, example, limit)
        check_other_paths(family, torch_model, method, op_options, graph_options, proto, interface, limit, seed,
                          folder)
        size = sum(f.stat().st_size for f in folder.glob(f"{written.name}*"))
    return ExportResult(str(output), name, family.task, method, op_options, workload, error, worst, limit,
                        size / 1e6)


def check_other_paths(family, torch_model, method: str, op_options: dict, graph_options: dict,
                      proto: onnx.ModelProto, interface: Interface, tolerance: float, seed: int,
                      folder: Path) -> None:
    """Check the written graph's other paths too: the same file with shrunken op attributes, on a workload
    that takes the op's data-dependent branch (a 64-token check never reaches DHSA's sparse selection)."""
    chosen = family.method(method)
    if not chosen.path_check_options:
        return
    options = {**op_options, **chosen.path_check_options}
    variant = folder / "path-check.onnx"  # beside the written model: it shares its external data, if any
    onnx.save(with_op_attributes(proto, chosen.op, chosen.path_check_options), str(variant))
    graph = family.prepare(torch_model, method, options, **graph_options)
    example = interface.example_inputs(get_task(family.task).sizes(chosen.path_check_workload), seed)
    check_parity(variant, graph, interface, example, tolerance)
    family.prepare(torch_model, method, op_options, **graph_options)  # leave the model as exported


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


def check_parity(model: Path | onnx.ModelProto, graph: torch.nn.Module, interface: Interface,
                 example: dict[str, np.ndarray], tolerance: float) -> tuple[str, float]:
    """Every output of ONNX Runtime vs PyTorch on the example: |diff| <= tolerance * max(1, max |torch|).

    Returns the output with the largest relative error and its max |diff|.
    """
    from edgekit.session import Session

    with torch.no_grad():
        expected = graph(*(torch.from_numpy(example[s.name]) for s in interface.inputs))
    expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else (expected,))]
    got = Session(model, ep="cpu").run(example)
    worst, worst_ratio, worst_error = "", -1.0, 0.0
    for spec, want in zip(interface.outputs, expected):
        error = float(np.abs(got[spec.name].astype(np.float64) - want).max()) if want.size else 0.0
        limit = tolerance * max(1.0, float(np.abs(want).max()) if want.size else 0.0)
        if not error <= limit:
            raise ExportParityError(spec.name, error, limit)
        if error / limit > worst_ratio:
            worst, worst_ratio, worst_error = spec.name, error / limit, error
    return worst, worst_error
