"""The registry of edgekit custom ops.

Each op lives in its own module and registers one `OpDef`: a PyTorch reference (the oracle for tests),
an onnxscript function body built from standard ONNX ops (attached to exported models as a
model-local function, so stock ONNX Runtime runs it on any execution provider), its attribute schema,
its typed outputs, its own version, sample inputs for the parity table, and the export hook that makes
`torch.onnx.export(dynamo=True)` emit one `edgekit.<Op>` node.

Versions: an op's `version` is bumped whenever its semantics change (a new default, a new scoring).
Every emitted node records it (node metadata `edgekit.version`), and so does the model
(`edgekit.ops`). A model always carries the bodies of the versions it was exported with, so old files
keep running; re-attaching a body of another version is refused (see `attach.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import onnx
import torch

from edgekit.errors import InvalidAttributeError

DOMAIN = "edgekit"
DOMAIN_OPSET = 1  # the `edgekit` opset import of every model; each op carries its own `version`
ONNX_OPSET = 23  # function bodies use opset-23 ops (Attention); exported models use the same opset
VERSION_KEY = "edgekit.version"  # node metadata that records the op version a node was emitted with

AttrValue = int | float | str | tuple


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One op attribute: its default (whose type is the attribute's type) and its valid range.

    Types are those ONNX allows: int, float, str, and tuples of int or float (ints / floats).
    `choices` limits a str or int attribute to a set of values.
    """

    name: str
    default: AttrValue
    doc: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple = ()

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def type_name(self) -> str:
        if isinstance(self.default, tuple):
            return "ints" if all(isinstance(v, int) for v in self.default) else "floats"
        return self.kind.__name__

    def check(self, value: Any) -> AttrValue:
        if isinstance(self.default, tuple):
            if not isinstance(value, (list, tuple)):
                raise InvalidAttributeError(f"attribute '{self.name}' must be a list, got {value!r}")
            item = int if self.type_name == "ints" else float
            return tuple(self._check_scalar(v, item) for v in value)
        return self._check_scalar(value, self.kind)

    def _check_scalar(self, value: Any, kind: type) -> AttrValue:
        if kind is str:
            if not isinstance(value, str):
                raise InvalidAttributeError(f"attribute '{self.name}' must be a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidAttributeError(f"attribute '{self.name}' must be a number, got {value!r}")
        elif kind is int and float(value) != int(value):
            raise InvalidAttributeError(f"attribute '{self.name}' must be an integer, got {value!r}")
        value = kind(value)
        if self.choices and value not in self.choices:
            raise InvalidAttributeError(
                f"attribute '{self.name}' must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise InvalidAttributeError(f"attribute '{self.name}' must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidAttributeError(f"attribute '{self.name}' must be <= {self.maximum}, got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class Output:
    """One op output: its name and element type (None: the type of the first input)."""

    name: str
    dtype: torch.dtype | None = None

    def torch_dtype(self, first_input: torch.Tensor) -> torch.dtype:
        return self.dtype or first_input.dtype


@dataclasses.dataclass(frozen=True)
class Sample:
    """One parity-table row: inputs for the reference and ONNX Runtime, attributes, tolerance."""

    name: str
    inputs: Callable[[], Sequence[torch.Tensor]]  # built on demand: tables stay cheap to import
    attrs: dict = dataclasses.field(default_factory=dict)
    atol: float = 1e-5


@dataclasses.dataclass(frozen=True)
class DataDependent:
    """An output size known only at run time (adaptive token pruning), in [low, high], plus a constant.

    While exporting, every DataDependent of one call with the same `key` becomes the same fresh unbacked
    SymInt (+ `plus`), so torch.export cannot bake a trace-time size into the graph downstream.
    """

    low: int
    high: int
    plus: int = 0
    key: str = "n"


def _unbacked(shapes, data_sizes: Callable[[], dict]):
    """Replace DataDependent entries by unbacked SymInts: `.item()` of the op's `data_sizes` tensors, traced
    into the graph, so the exported shapes downstream are computed from the same data at run time."""
    symbols, values = {}, {}

    def size(d):
        if not isinstance(d, DataDependent):
            return d
        if d.key not in symbols:
            values.update(values or data_sizes())
            symbols[d.key] = values[d.key].item()
            torch._check_is_size(symbols[d.key])
            torch._check(symbols[d.key] >= d.low)
            torch._check(symbols[d.key] <= d.high)
        return symbols[d.key] + d.plus

    return [[size(d) for d in shape] for shape in shapes]


@dataclasses.dataclass(frozen=True)
class OpDef:
    """Everything edgekit knows about one custom op."""

    name: str
    version: int
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[Output, ...]
    attributes: tuple[Attribute, ...]
    reference: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    function: Any  # onnxscript.OnnxFunction
    # (input shapes, resolved attributes) -> one shape per output
    output_shapes: Callable[[Sequence[Sequence[int]], dict], Sequence[Sequence[int]]]
    samples: Callable[[], Sequence[Sample]]
    check_attributes: Callable[[dict], None] = lambda attrs: None
    # (inputs, attrs) -> {key: 0-d int64 tensor}: the run-time value of each DataDependent output size
    data_sizes: Callable[[Sequence[torch.Tensor], dict], dict] | None = None

    @property
    def qualified_name(self) -> str:
        return f"{DOMAIN}::{self.name}"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def resolve(self, **attrs: Any) -> dict[str, AttrValue]:
        """Fill defaults and validate every attribute; unknown names are an error."""
        known = {a.name: a for a in self.attributes}
        unknown = sorted(set(attrs) - set(known))
        if unknown:
            raise InvalidAttributeError(
                f"{self.name} has no attribute {', '.join(unknown)}; known: {', '.join(known)}"
            )
        resolved = {name: a.check(attrs.get(name, a.default)) for name, a in known.items()}
        self.check_attributes(resolved)
        return resolved

    def function_proto(self) -> onnx.FunctionProto:
        proto = self.function.to_function_proto()
        proto.doc_string = f"{self.qualified_name} version {self.version}: {self.doc}"
        return proto

    def __call__(self, *inputs: torch.Tensor, **attrs: Any):
        """Run the op in PyTorch: the reference eagerly, one opaque node while exporting to ONNX."""
        resolved = self.resolve(**attrs)
        if not torch.onnx.is_in_onnx_export():
            return self.reference(*inputs, **resolved)
        shapes = _unbacked(self.output_shapes([x.shape for x in inputs], resolved),
                           lambda: self.data_sizes(inputs, resolved))
        dtypes = [o.torch_dtype(inputs[0]) for o in self.outputs]
        common = dict(version=DOMAIN_OPSET, metadata_props={VERSION_KEY: str(self.version)})
        onnx_attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
        if len(self.outputs) == 1:
            return torch.onnx.ops.symbolic(self.qualified_name, list(inputs), onnx_attrs, dtype=dtypes[0],
                                           shape=shapes[0], **common)
        return tuple(torch.onnx.ops.symbolic_multi_out(self.qualified_name, list(inputs), onnx_attrs,
                                                       dtypes=dtypes, shapes=shapes, **common))


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op to the registry; a clash or a body that disagrees with the schema is a programming error."""
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.qualified_name} is registered twice")
    proto = op.function.to_function_proto()
    if proto.name != op.name or proto.domain != DOMAIN:
        raise ValueError(f"op {op.name}: its ONNX function is {proto.domain}.{proto.name}")
    if tuple(proto.input) != op.inputs or len(proto.output) != len(op.outputs):
        raise ValueError(f"op {op.name}: function inputs/outputs {list(proto.input)} -> {list(proto.output)} "
                         f"do not match the schema {op.inputs} -> {op.output_names}")
    if op.version < 1:
        raise ValueError(f"op {op.name}: version must be >= 1")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name.split("::")[-1].split(".")[-1]]
    except KeyError:
        raise InvalidAttributeError(f"unknown op '{name}'; registered: {', '.join(_REGISTRY)}") from None


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())
