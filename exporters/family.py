"""The base of every model family: a family declares data, this class runs the export.

A family (one module per family, grouped by model kind: `llm/`, `vision/`, ...) declares its task, the
methods it supports (each optionally backed by an edgekit op whose schema validates the options), its
presets, and three small hooks: `interface` (typed inputs/outputs), `prepare` (the torch module to
export, taking the inputs in declared order) and `check_workload` (the inputs of the export check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from typing import Any, ClassVar, Mapping

import numpy as np
import onnx
import onnx_ir as ir
import torch

from edgekit import weight_layout
from edgekit.errors import EdgekitError
from edgekit.interface import Interface
from edgekit.runtime_ops import ONNX_OPSET, get_op
from edgekit.runtime_ops.attach import all_nodes


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to run a family's attention: its edgekit op (None: standard ONNX ops) and user options."""

    name: str
    op: str | None = None
    options: tuple[str, ...] = ()  # op attributes a user may set
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # op attributes the method pins
    doc: str = ""
    # A second export check for ops with data-dependent paths: the same graph with these op attributes,
    # on this workload, runs the path a short check prompt would never reach (DHSA's sparse selection).
    path_check_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path_check_workload: Mapping[str, int] = dataclasses.field(default_factory=dict)
    schema: str | None = None  # the op whose attribute schema validates `options` (default: `op`)

    def resolve(self, options: Mapping[str, Any]) -> dict:
        """Validate user options (all of them among `self.options`) against the op's schema."""
        schema = self.schema or self.op
        if schema is None:
            return dict(options)
        resolved = get_op(schema).resolve(**{**options, **self.fixed})
        return {k: resolved[k] for k in self.options}


class Family:
    """Subclasses set the class attributes and implement the hooks; `registry.register` routes names here."""

    task: ClassVar[str]
    kind: ClassVar[str]  # sub-package: "llm", "vision", ...
    methods: ClassVar[dict[str, Method]]
    default_method: ClassVar[str] = "dense"  # the baseline, what `export` writes when no method is named
    presets: ClassVar[dict[str, dict]] = {}
    architectures: ClassVar[tuple[str, ...]] = ()
    model_type: ClassVar[str | None] = None  # Hugging Face model_type, routed to the family too
    graph_options: ClassVar[tuple[str, ...]] = ()  # export options that shape the graph, not the op
    tolerance: ClassVar[float] = 1e-3  # export check: max |ONNX - torch| <= tolerance * max(1, max |torch|)

    # --- hooks ---------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def interface(cls, model: torch.nn.Module, **graph_options) -> Interface:
        """Typed inputs/outputs (plus recurrent pairs and limits) of the graph `prepare` returns.

        The exporter fills in method, options and names before writing it into the file's metadata.
        """
        raise NotImplementedError

    @classmethod
    def prepare(cls, model: torch.nn.Module, method: str, options: dict, **graph_options) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def check_workload(cls, **graph_options) -> dict[str, int]:
        raise NotImplementedError

    @classmethod
    def from_folder(cls, path) -> torch.nn.Module:
        raise EdgekitError(f"{cls.__name__} models cannot be loaded from a folder; use a preset "
                           f"({', '.join(cls.presets)}) with --weights")

    @classmethod
    def load_weights(cls, model: torch.nn.Module, path: str) -> None:
        raise EdgekitError(f"{cls.__name__} models take no --weights file: pass a folder or file as the model")

    # --- shared machinery ----------------------------------------------------------------------------
    @classmethod
    def method(cls, name: str | None) -> Method:
        name = name or cls.default_method
        if name not in cls.methods:
            raise EdgekitError(f"{cls.__name__} ({cls.task}) has no method '{name}'; choose one of "
                               f"{', '.join(cls.methods)}")
        return cls.methods[name]

    @classmethod
    def split_options(cls, method: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
        """(validated op options, graph options) from everything a user passed to export."""
        graph = {k: v for k, v in options.items() if k in cls.graph_options}
        chosen, rest = cls.method(method), {k: v for k, v in options.items() if k not in graph}
        method = chosen.name
        unknown = sorted(set(rest) - set(chosen.options))
        if unknown:
            owners = [m.name for m in cls.methods.values() if set(unknown) <= set(m.options)]
            hint = f"it applies to --method {' / '.join(owners)}" if owners else \
                f"--method {method} takes {', '.join(chosen.options) or 'no options'}"
            raise EdgekitError(f"option {', '.join(unknown)} does not apply to --method {method}: {hint}")
        return chosen.resolve(rest), graph

    @classmethod
    def dynamic_shapes(cls, interface: Interface) -> dict:
        """torch.export's dynamic shapes: every symbolic dim of the interface, free (families constrain)."""
        return {s.name: {i: d for i, d in enumerate(s.dims) if isinstance(d, str)} for s in interface.inputs}

    @classmethod
    def to_onnx_ir(cls, graph: torch.nn.Module, interface: Interface,
                   example: Mapping[str, np.ndarray]) -> ir.Model:
        """Export with torch's dynamo exporter; symbolic axes come from the interface.

        The onnx-ir model's initializers still point at the torch tensors (nothing is copied): write it
        with `files.save_weights`, then `tidy` the proto.
        """
        args = tuple(torch.from_numpy(example[s.name]) for s in interface.inputs)
        dynamic = cls.dynamic_shapes(interface)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, args, input_names=[s.name for s in interface.inputs],
                                        output_names=[s.name for s in interface.outputs],
                                        dynamic_shapes=dynamic, opset_version=ONNX_OPSET, dynamo=True,
                                        verbose=False)
        weight_layout.store_tied_head_once(program.model)
        return program.model

    @classmethod
    def to_onnx(cls, graph: torch.nn.Module, interface: Interface,
                example: Mapping[str, np.ndarray]) -> onnx.ModelProto:
        """The same export as one in-memory proto, weights included (small models, tests, benchmarks)."""
        return tidy(ir.to_proto(cls.to_onnx_ir(graph, interface, example)), interface)


def tidy(proto: onnx.ModelProto, interface: Interface) -> onnx.ModelProto:
    """The exported graph as edgekit writes it: declared dims, no torch debug metadata."""
    return drop_debug_metadata(declare_dims(proto, interface))


def declare_dims(proto: onnx.ModelProto, interface: Interface) -> onnx.ModelProto:
    """Name every graph input/output dim as the interface does ("batch", "sequence", 12, ...).

    torch's exporter names symbolic dims s0, s1, ... and can record batch 1 in some intermediate shapes
    (Gemma2's scaled embedding), after which ONNX Runtime warns on every batch > 1 run. The interface is
    declared here; intermediate `value_info` is dropped and ONNX Runtime infers it on load.
    """
    del proto.graph.value_info[:]
    for values, specs in ((proto.graph.input, interface.inputs), (proto.graph.output, interface.outputs)):
        for value, spec in zip(values, specs):
            dims = value.type.tensor_type.shape.dim
            for dim, want in zip(dims, spec.dims):
                dim.Clear()
                if isinstance(want, str):
                    dim.dim_param = want
                else:
                    dim.dim_value = want
    return proto


def drop_debug_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop torch's per-node debug metadata (stack traces, FX names: a third of a small model's file);
    edgekit's own keys (the op version) stay."""
    for node in all_nodes(proto):
        kept = [p for p in node.metadata_props if p.key.startswith("edgekit.")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return proto
