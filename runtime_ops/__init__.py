"""edgekit custom ops: one module per op, each registered in `registry`."""

from . import codebook, dhsa, flowcut, hilo, sliding_window  # noqa: F401  (each module registers its op)
from .registry import DOMAIN, DOMAIN_OPSET, ONNX_OPSET, OpDef, all_ops, get_op

__all__ = ["DOMAIN", "DOMAIN_OPSET", "ONNX_OPSET", "OpDef", "all_ops", "get_op"]
