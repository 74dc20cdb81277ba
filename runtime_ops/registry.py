"""The registry of edgekit custom ops.

Each op lives in its own module and registers one `OpDef`: a PyTorch reference (the oracle for tests),
an onnxscript function body built from standard ONNX ops (attached to exported models as a
model-local function, so stock ONNX Runtime runs it on any execution provider), its attribute schema,
and the export hook that makes `torch.onnx.export(dynamo=True)` emit one `edgekit.<Op>` node.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import onnx
import torch

from edgekit.errors import InvalidAttributeError

DOMAIN = "edgekit"
DOMAIN_VERSION = 1
ONNX_OPSET = 23  # function bodies use opset-23 ops (Attention); exported models use the same opset


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One op attribute: its default, its type and the smallest value it accepts."""

    name: str
    default: int | float
    doc: str
    minimum: int | float | None = None
    maximum: int | float | None = None

    @property
    def kind(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidAttributeError(f"attribute '{self.name}' must be a number, got {value!r}")
        if self.kind is int and float(value) != int(value):
            raise InvalidAttributeError(f"attribute '{self.name}' must be an integer, got {value!r}")
        value = self.kind(value)
        if self.minimum is not None and value < self.minimum:
            raise InvalidAttributeError(f"attribute '{self.name}' must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidAttributeError(f"attribute '{self.name}' must be <= {self.maximum}, got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class OpDef:
    """Everything edgekit knows about one custom op."""

    name: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[Attribute, ...]
    reference: Callable[..., torch.Tensor]
    function: Any  # onnxscript.OnnxFunction
    output_shape: Callable[[Sequence[Sequence[int]]], Sequence[int]]
    check_attributes: Callable[[dict], None] = lambda attrs: None

    @property
    def qualified_name(self) -> str:
        return f"{DOMAIN}::{self.name}"

    def resolve(self, **attrs: Any) -> dict[str, int | float]:
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
        return self.function.to_function_proto()

    def __call__(self, *inputs: torch.Tensor, **attrs: Any) -> torch.Tensor:
        """Run the op in PyTorch: the reference eagerly, one opaque node while exporting to ONNX."""
        resolved = self.resolve(**attrs)
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                self.qualified_name,
                list(inputs),
                resolved,
                dtype=inputs[0].dtype,
                shape=self.output_shape([x.shape for x in inputs]),
                version=DOMAIN_VERSION,
            )
        return self.reference(*inputs, **resolved)


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op to the registry; a second op with the same name is a programming error."""
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.qualified_name} is registered twice")
    proto_name = op.function.to_function_proto().name
    if proto_name != op.name:
        raise ValueError(f"op {op.name}: its ONNX function is named {proto_name}")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name.split("::")[-1]]
    except KeyError:
        raise InvalidAttributeError(f"unknown op '{name}'; registered: {', '.join(_REGISTRY)}") from None


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())
