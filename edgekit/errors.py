"""Typed errors. Library code raises these; only the CLI turns them into `Error: ...` and an exit code."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message: what a one-line error can quote."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


class EdgekitError(Exception):
    """Base class for every error edgekit reports to users as one line."""


class InvalidAttributeError(EdgekitError, ValueError):
    """An op attribute is outside its valid range (budget <= 0, block size 0, ...)."""


class ShapeError(EdgekitError, ValueError):
    """Inputs of an op or model have shapes that cannot work together."""


class UnsupportedModelError(EdgekitError):
    """The model's architecture has no exporter; the message lists the supported ones."""


class ModelLoadError(EdgekitError):
    """A model file or folder is missing, unreadable or corrupt."""


class ExportParityError(EdgekitError):
    """The exported ONNX model disagrees with PyTorch beyond the stated tolerance."""

    def __init__(self, output: str, max_abs_error: float, tolerance: float):
        super().__init__(
            f"exported model output '{output}' differs from PyTorch by {max_abs_error:.3g} "
            f"(tolerance {tolerance:.3g})"
        )
        self.output = output
        self.max_abs_error = max_abs_error
        self.tolerance = tolerance


class ExecutionProviderError(EdgekitError):
    """The requested execution provider is unknown or not available in this onnxruntime build."""


class OutputError(EdgekitError):
    """An output file cannot be written where asked (a directory, a file as parent, no permission)."""


class ProfileError(EdgekitError):
    """A profiling request cannot run (bad sequence lengths, no models, ...)."""


class EdgekitWarning(UserWarning):
    """Valid but doubtful input (a prompt past the trained context, ...); the CLI prints it as one line."""



class QuantizationError(EdgekitError):
    """A model cannot be quantized as asked (unknown precision, bad calibration data, a quantizer failure)."""


class QuantizationAgreementError(QuantizationError):
    """The quantized model disagrees with the float model beyond the user's --atol / --min-top1."""


class CompileError(EdgekitError):
    """Ahead-of-time optimization for an execution provider failed."""


class PlacementError(CompileError):
    """Strict placement: nodes the requested execution provider cannot run (they would fall back to CPU)."""
