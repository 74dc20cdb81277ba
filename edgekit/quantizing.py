"""`quantize`: an ONNX model -> a smaller one (int8 dynamic / int8 static QDQ / int8 or int4 weight-only blockwise /
fp16), checked.

Every precision is ONNX Runtime's own tool (`onnxruntime.quantization`, `onnxruntime.transformers.float16`);
edgekit adds what they do not: edgekit ops and their function bodies kept as they were (quantizers never
enter function bodies, so the op's own MatMuls stay float: the projections around it are quantized),
metadata kept and extended with `edgekit.precision`, a note of what was and was not quantized, and an
agreement check against the float model before the file is written (`--atol`, `--min-top1`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from edgekit import weight_layout
from edgekit.agreement import Agreement, agreement_feeds, check_feeds, check_sizes, compare
from edgekit.errors import ModelLoadError, QuantizationAgreementError, QuantizationError, ShapeError, first_line
from edgekit.files import EXTERNAL_DATA_BYTES, atomic_output_group, check_writable, save_onnx
from edgekit.interface import TensorSpec
from edgekit.session import Session, file_bytes, load_model

PRECISION_KEY, SETTINGS_KEY = "edgekit.precision", "edgekit.quantization"  # metadata written on the output
TARGET_OPS = ("MatMul", "Gemm")  # not Attention: ORT would make it QAttention, which then fails to load
KEPT_FLOAT_OPS = ("Attention", "com.microsoft.GroupQueryAttention", "Conv", "ConvTranspose", "Einsum", "LSTM",
                  "GRU")  # heavy ops left float
CALIBRATION_SAMPLES = 8
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two >= 16
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8


@dataclasses.dataclass
class QuantizeSettings:
    precision: str
    block_size: int = 32
    accuracy_level: int = 4
    calibration: str = "synthetic"  # or the .npz file's path
    seed: int = 0


@dataclasses.dataclass
class QuantizeResult:
    path: str
    source: str
    settings: QuantizeSettings
    size_mb: tuple[float, float]  # file (+ external data), before and after
    weights_mb: tuple[float, float]  # initializers, before and after
    nodes: tuple[dict[str, int], dict[str, int]]  # main-graph node counts by op type, before and after
    notes: list[str]  # what was and was not quantized
    agreement: Agreement | None  # None: an fp16 model ORT's CPU provider cannot run (see notes)
    external_data: bool

    @property
    def size_ratio(self) -> float:
        return self.size_mb[1] / self.size_mb[0]

    @property
    def weights_ratio(self) -> float:
        return self.weights_mb[1] / self.weights_mb[0] if self.weights_mb[0] else 1.0


@dataclasses.dataclass
class _Job:
    """One quantizer run: the float model's files, where to write, and what it needs to know."""

    source: Path  # pre-processed float model
    output: Path
    settings: QuantizeSettings
    external: bool
    calibration: list[dict[str, np.ndarray]]
    function_ops: list[str]  # op types with a model-local function body


def quantize(model: str | os.PathLike, output: str | os.PathLike, precision: str = "int8", *,
             calibration: str | os.PathLike | None = None, block_size: int = 32, accuracy_level: int = 4,
             atol: float | None = None, min_top1: float | None = None, seed: int = 0) -> QuantizeResult:
    """Quantize `model` to `output` and check it against the float model; write nothing if the check fails.

    int8: dynamic (weights int8, activations quantized at run time: MatMulInteger); int8-static: QDQ with
    activation ranges calibrated on `calibration` (an .npz named like the inputs) or synthetic inputs;
    int8-block / int4: weight-only MatMulNBits (`block_size`, `accuracy_level` 4 = int8 compute on CPU; int8-block
    at block 32 is llama.cpp's Q8_0 scheme: one scale per 32 weights, activations quantized per block); fp16: for GPU
    providers (ORT's CPU provider lacks fp16 kernels for some ops, the output may then not load on CPU).
    A model with external data (or over 1.8 GB) is written as `output` + `output.data`, both or neither.
    """
    settings = QuantizeSettings(precision, block_size, accuracy_level, str(calibration or "synthetic"), seed)
    _check_settings(settings, atol, min_top1)
    check_writable(output)
    source = _Source.load(Path(model))
    reference = Session(model)
    sizes = check_sizes(reference)
    feeds, inputs = agreement_feeds(reference, sizes, seed)
    calib = _calibration(reference.inputs, sizes, calibration, seed) if precision == "int8-static" else []
    with atomic_output_group(output) as folder, _quiet():
        quantized, restored = _quantized(source, folder / "work", settings, calib)
        weights = _weight_bytes(quantized)
        target, large = folder / Path(output).name, source.external or weights > EXTERNAL_DATA_BYTES
        notes = describe(source.model, quantized, precision, restored)
        save_onnx(quantized, target, large)
        agreement = _agreement(reference, target, feeds, sizes, precision, notes, inputs)
        _enforce(agreement, atol, min_top1)
        size = sum(f.stat().st_size for f in (target, Path(f"{target}.data")) if f.exists())
    return QuantizeResult(str(output), str(model), settings, (source.file_bytes / 1e6, size / 1e6),
                          (_weight_bytes(source.model) / 1e6, weights / 1e6),
                          (op_counts(source.model), op_counts(quantized)), notes, agreement, large)


@dataclasses.dataclass
class _Source:
    """The float model with its weights, and whether (and how much) it keeps in external data files."""

    path: Path
    model: onnx.ModelProto
    external: bool
    file_bytes: int

    @classmethod
    def load(cls, path: Path) -> "_Source":
        model = load_model(path, load_external_data=False)
        external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
        size = file_bytes(path, model)
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the external data of {path}: {first_line(exc)}") from None
        return cls(path, model, external, size)


def _quantized(source: _Source, work: Path, settings: QuantizeSettings,
               calibration: list[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, bool]:
    """Run the precision's tool in a scratch folder (ORT's tools write files beside their input)."""
    work.mkdir()
    laid_out = _laid_out(source, work, share_tied=settings.precision in ("int8", "int8-block", "int4"))
    prepared = _pre_process(laid_out, work, source.external) if settings.precision.startswith("int8") else laid_out
    job = _Job(prepared, work / "quantized.onnx", settings, source.external, calibration,
               sorted({n.op_type for n in _function_ops(source.model)}))
    quantizer = PRECISIONS[settings.precision][0]
    try:
        quantizer(job)
        quantized = onnx.load(str(job.output))
    except Exception as exc:  # noqa: BLE001 - ORT's tools raise anything; the user gets one line
        raise QuantizationError(f"{settings.precision} quantization failed in ONNX Runtime's tool: "
                                f"{type(exc).__name__}: {first_line(exc)}") from None
    return _keep_edgekit(source.model, quantized, settings)


def _check_settings(settings: QuantizeSettings, atol: float | None, min_top1: float | None) -> None:
    if settings.precision not in PRECISIONS:
        raise QuantizationError(f"unknown precision '{settings.precision}'; known: {', '.join(PRECISIONS)}")
    if settings.block_size not in BLOCK_SIZES:
        raise QuantizationError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                                f"got {settings.block_size}")
    if settings.accuracy_level not in ACCURACY_LEVELS:
        raise QuantizationError(f"--accuracy-level must be 0-4 (4: int8 compute), got {settings.accuracy_level}")
    if atol is not None and not atol >= 0:
        raise QuantizationError(f"--atol must be >= 0, got {atol}")
    if min_top1 is not None and not 0 <= min_top1 <= 1:
        raise QuantizationError(f"--min-top1 must be in [0, 1], got {min_top1}")
    if settings.calibration != "synthetic" and settings.precision != "int8-static":
        raise QuantizationError(f"calibration data is for --precision int8-static, not {settings.precision}")


# ---------------------------------------------------------------------------------------------------
# calibration data


def _calibration(specs: Sequence[TensorSpec], sizes: dict[str, int], npz: str | os.PathLike | None,
                 seed: int) -> list[dict[str, np.ndarray]]:
    """Synthetic inputs from the interface (seeds apart from the check's), or the user's .npz file."""
    if npz is None:
        return check_feeds(specs, sizes, seed + 1000, CALIBRATION_SAMPLES)
    try:
        with np.load(str(npz), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:
        raise QuantizationError(f"calibration data {npz} is not a readable .npz file: {first_line(exc)}") from None
    return _samples(specs, arrays, str(npz))


def _samples(specs: Sequence[TensorSpec], arrays: dict[str, np.ndarray], where: str) -> list[dict]:
    """An array with the input's rank is one sample; one more leading axis stacks several."""
    names = {s.name for s in specs}
    if set(arrays) != names:
        raise ShapeError(f"calibration data {where} has arrays {', '.join(sorted(arrays)) or 'none'}; "
                         f"the model's inputs are {', '.join(sorted(names))}")
    stacks = {s.name: arrays[s.name] if arrays[s.name].ndim == len(s.dims) + 1 else arrays[s.name][None]
              for s in specs}
    counts = {len(v) for v in stacks.values()}
    if len(counts) != 1:
        raise ShapeError(f"calibration data {where}: inputs hold different numbers of samples")
    try:
        return [{s.name: s.validate(stacks[s.name][i]) for s in specs} for i in range(counts.pop())]
    except ShapeError as exc:
        raise ShapeError(f"calibration data {where}: {exc}") from None


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


# ---------------------------------------------------------------------------------------------------
# the quantizers: one function per precision, each ONNX Runtime's tool with the settings edgekit needs


def _laid_out(source: _Source, work: Path, share_tied: bool) -> Path:
    """The float model with every MatMul weight an initializer (and a tied embedding stored once, for
    int8, int8-block and int4), so the quantizer sees them all; the source itself when nothing changes (see
    weight_layout)."""
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    changed = weight_layout.fold_transposed_weights(model)
    if share_tied:
        changed += weight_layout.share_tied_embedding(model)
    if not changed:
        return source.path
    out = work / "laid-out.onnx"
    save_onnx(model, out, source.external)
    return out


def _pre_process(model: Path, work: Path, external: bool) -> Path:
    """ORT's recommended pre-processing, shape inference only (its optimizer would inline the edgekit
    functions). Symbolic shape inference may fail on custom nodes: then ONNX's alone, then none."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "prepared.onnx"
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(model), str(out), skip_optimization=True, skip_symbolic_shape=skip_symbolic,
                              save_as_external_data=external, all_tensors_to_one_file=True,
                              external_data_location=f"{out.name}.data")
            return out
        except Exception:  # noqa: BLE001, S112 - the tool raises anything; quantizing without it still works
            continue
    return model


def _int8_dynamic(job: _Job) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(job.source), str(job.output), op_types_to_quantize=[*TARGET_OPS, "Gather"],
                     weight_type=QuantType.QInt8, use_external_data_format=job.external,
                     extra_options={"MatMulConstBOnly": True})


def _int8_static(job: _Job) -> None:
    """QDQ with uint8 activations / int8 weights (ORT's advice for x86 CPUs). MatMul outputs stay float:
    a Q/DQ pair on an output feeding an edgekit op is pushed into its inlined body by ORT's
    QDQPropagationTransformer, which aborts the process (ORT 1.32)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(job.source), str(job.output), _Reader(job.calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(TARGET_OPS), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, use_external_data_format=job.external,
                    extra_options={"MatMulConstBOnly": True,
                                   "OpTypesToExcludeOutputQuantization": list(TARGET_OPS)})


def _int8_block(job: _Job) -> None:
    _weight_only(job, bits=8)


def _int4(job: _Job) -> None:
    _weight_only(job, bits=4)


def _weight_only(job: _Job, bits: int) -> None:
    """MatMul weights in `bits` (MatMulNBits). A tied embedding reads the head's packed uint8 blocks
    (GatherBlockQuantized, `weight_layout.lookup_quantized_head`); other embedding tables go int8 (ORT's
    own GatherBlockQuantized quantizer writes 4-bit tensor types, which the ORT format cannot hold)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(job.source))
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=job.settings.block_size, is_symmetric=True,
                                     accuracy_level=job.settings.accuracy_level, op_types_to_quantize=("MatMul",))
    quantizer.process()
    weight_layout.lookup_quantized_head(quantizer.model.model)
    matmuls = job.output.with_name(f"int{bits}-matmuls.onnx")
    quantizer.model.save_model_to_file(str(matmuls), use_external_data_format=job.external)
    quantize_dynamic(str(matmuls), str(job.output), op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8,
                     use_external_data_format=job.external)


def _fp16(job: _Job) -> None:
    """Inputs and outputs stay float32; edgekit ops stay float32 behind Casts (their bodies are float32)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(job.source)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *job.function_ops])
    save_onnx(model, job.output, job.external)


PRECISIONS: dict[str, tuple[Callable[[_Job], None], str]] = {
    "int8": (_int8_dynamic, "int8 dynamic: MatMul/Gemm weights and embedding tables int8, activations quantized at run time"),
    "int8-static": (_int8_static, "int8 static (QDQ): weights int8, activations uint8 with calibrated ranges"),
    "int8-block": (_int8_block, "int8 weight-only (MatMulNBits 8 bits, blockwise, symmetric: Q8_0-like); a tied "
                   "embedding reads the head's blocks (GatherBlockQuantized), other embedding tables int8"),
    "int4": (_int4, "int4 weight-only (MatMulNBits, blockwise, symmetric); a tied embedding reads the head's "
             "blocks (GatherBlockQuantized), other embedding tables int8"),
    "fp16": (_fp16, "float16 weights and activations, float32 inputs/outputs (for GPU providers)"),
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizers log warnings and per-node INFO lines; library code stays silent."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ---------------------------------------------------------------------------------------------------
# the output: edgekit ops and metadata kept, what changed described


def _keep_edgekit(source: onnx.ModelProto, quantized: onnx.ModelProto, settings: QuantizeSettings
                  ) -> tuple[onnx.ModelProto, bool]:
    """Keep the float model's functions (restored if a tool touched them), opset imports and metadata; drop
    the value_info the tools' shape inference recorded: it can hold wrong dims (gemma2-tiny with DHSA:
    present.0.key with a fixed 47 where 'sequence' belongs), which ORT trusts when it reuses buffers.

    Returns the model and whether a function body had to be restored.
    """
    before = {(f.domain, f.name): f.SerializeToString() for f in source.functions}
    after = {(f.domain, f.name): f.SerializeToString() for f in quantized.functions}
    restored = before != after
    if restored:
        del quantized.functions[:]
        quantized.functions.extend(source.functions)
    del quantized.graph.value_info[:]
    imported = {o.domain for o in quantized.opset_import}
    quantized.opset_import.extend(o for o in source.opset_import if o.domain not in imported)
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update({PRECISION_KEY: settings.precision, SETTINGS_KEY: json.dumps(dataclasses.asdict(settings))})
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, meta)
    return quantized, restored


def _agreement(reference: Session, target: Path, feeds: list[dict[str, np.ndarray]], sizes: dict[str, int],
               precision: str, notes: list[str],
               inputs: str = "seeded inputs") -> Agreement | None:
    """Compare on ORT's CPU provider; an fp16 model it cannot run is written unchecked, and says so."""
    try:
        candidate = Session(target)
    except ModelLoadError as exc:
        if precision != "fp16":
            raise
        notes.append(f"agreement not checked: ORT's CPU provider cannot run it ({exc})")
        return None
    return compare(reference, candidate, feeds, sizes, inputs)


def _enforce(agreement: Agreement | None, atol: float | None, min_top1: float | None) -> None:
    if agreement is None:
        if atol is not None or min_top1 is not None:
            raise QuantizationAgreementError("--atol / --min-top1 need the agreement check, which ORT's CPU "
                                             "provider cannot run on this fp16 model; nothing written")
        return
    name, error = agreement.worst()
    if atol is not None and not error <= atol:
        raise QuantizationAgreementError(f"quantized output '{name}' differs from the float model by {error:.3g} "
                                         f"(--atol {atol:g}); nothing written")
    if min_top1 is not None and agreement.top1 is not None and agreement.top1 < min_top1:
        raise QuantizationAgreementError(f"top-1 agreement with the float model is {agreement.top1:.3f} "
                                         f"(--min-top1 {min_top1:g}); nothing written")


def op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Main-graph nodes by op type ('com.microsoft.MatMulNBits', 'edgekit.DHSAAttention' for other domains)."""
    return dict(sorted(collections.Counter(op_key(n) for n in model.graph.node).items()))


def _float_targets(model: onnx.ModelProto) -> int:
    """MatMul / Gemm nodes still computing in float: none of their inputs comes from a DequantizeLinear."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type in TARGET_OPS and not dequantized & set(n.input))


def _function_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes that call a model-local function: edgekit ops (and any other op with a body)."""
    functions = {(f.domain, f.name) for f in model.functions}
    return [n for n in model.graph.node if (n.domain, n.op_type) in functions]


def describe(source: onnx.ModelProto, quantized: onnx.ModelProto, precision: str, restored: bool) -> list[str]:
    """Lines for the user: node counts that changed, what was quantized, what stayed float and why."""
    before, after = op_counts(source), op_counts(quantized)
    changed = [f"{op} {before.get(op, 0)} -> {after.get(op, 0)}" for op in sorted({*before, *after})
               if before.get(op, 0) != after.get(op, 0)]
    lines = [PRECISIONS[precision][1], "nodes: " + (", ".join(changed) or "no change")]
    if precision == "fp16":
        lines.append("fp16 is meant for GPU providers: ORT's CPU provider lacks fp16 kernels for some ops "
                     "(then the model does not load on CPU)")
    else:
        targets, left = _float_targets(source), _float_targets(quantized)
        kept = [f"MatMul/Gemm {left}"] if left else []
        kept += [f"{op} {after[op]}" for op in KEPT_FLOAT_OPS if after.get(op)]
        lines.append(f"quantized: {targets - left} of {targets} MatMul/Gemm; kept float: {', '.join(kept) or '-'}")
    lines += [f"float weights left: {_float_weights(quantized)}"]
    body = "body restored from the float model" if restored else "body untouched"
    lines += [f"{op} {count} kept, {body} (quantizers do not enter function bodies: the op's own math stays "
              f"float)" for op, count in collections.Counter(map(op_key, _function_ops(source))).items()]
    return lines


def _float_weights(model: onnx.ModelProto, min_elements: int = 4096) -> str:
    """Float initializers of 4096+ elements still in the model, by the op types that read them."""
    readers = collections.defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            readers[name].add(op_key(node))
    sizes = collections.Counter()
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= min_elements:
            sizes["/".join(sorted(readers[t.name])) or "unused"] += 4 * int(np.prod(t.dims)) / 1e6
    return ", ".join(f"{mb:.2f} MB in {ops}" for ops, mb in sizes.items()) or "none"


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer)
