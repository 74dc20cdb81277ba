"""edgekit custom ops: one module per op, each registered in `registry`."""

from . import codebook, dhsa  # noqa: F401  (register edgekit::CodebookFilter, edgekit::DHSAAttention)
from .registry import DOMAIN, DOMAIN_OPSET, ONNX_OPSET, OpDef, all_ops, get_op

__all__ = ["DOMAIN", "DOMAIN_OPSET", "ONNX_OPSET", "OpDef", "all_ops", "get_op"]
