"""edgekit: efficient-attention models exported to ONNX with custom ops, run and profiled in ONNX Runtime."""

__version__ = "0.1.0"
