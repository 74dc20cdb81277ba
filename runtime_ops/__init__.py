"""edgekit custom ops: one module per op, each registered in `registry`."""

from . import dhsa  # noqa: F401  (registers edgekit::DHSAAttention)
from . import hilo  # noqa: F401  (registers edgekit::HiLoAttention)
from .registry import DOMAIN, DOMAIN_OPSET, ONNX_OPSET, OpDef, all_ops, get_op

__all__ = ["DOMAIN", "DOMAIN_OPSET", "ONNX_OPSET", "OpDef", "all_ops", "get_op"]
