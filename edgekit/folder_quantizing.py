"""`quantize_folder`: a model folder -> a new folder whose prefill and decode graphs are both quantized.

Each graph goes through `quantize` (ONNX Runtime's tool, its own agreement check against the float
graph); the decode step's GroupQueryAttention is no MatMul, so it stays as it is and still updates the
cache in place. The tokenizer and manifest travel along (the manifest records the precision and each
graph's agreement), and greedy generation through the new folder is compared with the float folder's.
The new folder appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from edgekit.errors import QuantizationError
from edgekit.files import atomic_folder, check_writable_folder
from edgekit.model_folder import CHECK_PROMPT, CHECK_STEPS, DECODE, MANIFEST, PREFILL, TOKENIZER, read_manifest

GRAPHS = {"prefill": PREFILL, "decode": DECODE}


@dataclasses.dataclass
class FolderQuantizeResult:
    path: str
    source: str
    graphs: dict  # "prefill" / "decode" -> QuantizeResult
    greedy_match: int  # of CHECK_STEPS greedy tokens, how many equal the float folder's (in order, from the first)


def quantize_folder(folder: str | os.PathLike, output: str | os.PathLike, precision: str = "int8", *,
                    seed: int = 0, **options) -> FolderQuantizeResult:
    """Quantize both graphs of `folder` to `precision` into the new folder `output`; options as for `quantize`
    (no calibration file: one .npz cannot hold both graphs' inputs, they calibrate on synthetic ones)."""
    from edgekit.quantizing import quantize

    source, manifest = Path(folder), read_manifest(folder)
    _check(source, Path(output), manifest, options)
    check_writable_folder(output, MANIFEST)
    with atomic_folder(output, MANIFEST) as tmp:
        graphs = {role: quantize(source / name, tmp / name, precision, seed=seed, **options)
                  for role, name in GRAPHS.items()}
        if manifest.files.get("tokenizer"):
            shutil.copytree(source / TOKENIZER, tmp / TOKENIZER)
        summary = {role: {"notes": r.notes, "agreement": r.agreement.describe() if r.agreement else None}
                   for role, r in graphs.items()}
        manifest = dataclasses.replace(manifest, precision=precision, quantization={
            "settings": dataclasses.asdict(graphs["decode"].settings), "graphs": summary})
        manifest.write(tmp)
        match = greedy_agreement(source, tmp, seed)
        dataclasses.replace(manifest, check={**manifest.check, "greedy_match_float": f"{match}/{CHECK_STEPS}"}
                            ).write(tmp)
    graphs = {role: dataclasses.replace(r, path=str(Path(output) / GRAPHS[role])) for role, r in graphs.items()}
    return FolderQuantizeResult(str(output), str(folder), graphs, match)


def _check(source: Path, output: Path, manifest, options: dict) -> None:
    if manifest.precision != "float32":
        raise QuantizationError(f"{source} is already quantized ({manifest.precision}): quantize its float folder")
    if options.get("calibration"):
        raise QuantizationError("a model folder is calibrated on synthetic inputs: drop --calibration (or quantize "
                                "one graph file with it)")
    if output.resolve() == source.resolve():
        raise QuantizationError(f"the output folder is the model folder {source}: choose a new one")


def greedy_agreement(float_folder: Path, folder: Path, seed: int) -> int:
    """How many greedy tokens (CHECK_STEPS after a seeded prompt) match the float folder's before they part."""
    from edgekit.generation import Generator

    reference = Generator(float_folder, context=CHECK_PROMPT + CHECK_STEPS)
    candidate = Generator(folder, context=CHECK_PROMPT + CHECK_STEPS)
    prompt = np.random.default_rng(seed).integers(0, reference.vocab_size, CHECK_PROMPT).tolist()
    want, got = (g.generate(prompt, CHECK_STEPS, ignore_eos=True).token_ids for g in (reference, candidate))
    return next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), CHECK_STEPS)
