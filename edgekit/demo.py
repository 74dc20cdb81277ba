"""The main job on built-in defaults: each mechanism against its baseline, on the same network.

One `Showcase` per mechanism (data): which preset, which baseline and method, which workloads. Every
showcase exports both methods (checked against PyTorch), profiles them side by side and yields the
results; the CLI prints one table per mechanism. A few minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from edgekit.files import check_writable


@dataclasses.dataclass(frozen=True)
class Showcase:
    title: str
    model: str
    baseline: str
    method: str
    options: dict
    workloads: dict  # profile() axis arguments: seq_lens / image_sizes / batch_sizes


SHOWCASES = (
    Showcase("DHSA: long-context prefill (llama-demo, random weights)", "llama-demo", "dense", "dhsa",
             {"budget_tokens": 1024}, {"seq_lens": [2048, 4096, 8192]}),
    Showcase("HiLo: LITv2-S backbone, stage-3 attention (random weights)", "litv2-s", "msa", "hilo", {},
             {"image_sizes": [224, 448]}),
    Showcase("Codebook: ObjectNav policy step with the real DINOv2 ViT-S/14 encoder", "embclip-dinov2-s", "dense",
             "codebook", {}, {"batch_sizes": [1, 8]}),
    Showcase("FlowCut: LLaVA-style VLM prefill, real DINOv2 tower at 336 px, 64 of 576 visual tokens kept "
             "(random LLM)", "llava-dinov2-s-demo", "dense", "flowcut", {"keep": 64}, {"seq_lens": [64]}),
)


def paths(output_dir: Path, showcase: Showcase) -> dict[str, Path]:
    stem = output_dir / showcase.model
    return {"baseline": Path(f"{stem}-{showcase.baseline}.onnx"), "method": Path(f"{stem}-{showcase.method}.onnx"),
            "json": Path(f"{stem}-profile.json"), "plot": Path(f"{stem}-profile.png")}


def check_outputs(output_dir: Path) -> None:
    for showcase in SHOWCASES:
        for path in paths(output_dir, showcase).values():
            check_writable(path)


def run(output_dir: Path, repeat: int = 3, on_export: Callable[[str], None] | None = None,
        on_step=None) -> Iterator[tuple[Showcase, dict, dict[str, Path]]]:
    """Export and profile each showcase in turn; yields (showcase, profile results, its output paths)."""
    from edgekit.exporting import export
    from edgekit.profiling import profile

    check_outputs(output_dir)
    for showcase in SHOWCASES:
        files = paths(output_dir, showcase)
        for key, method, options in (("baseline", showcase.baseline, {}), ("method", showcase.method,
                                                                           showcase.options)):
            if on_export:
                on_export(f"exporting {showcase.model} ({method})")
            export(showcase.model, str(files[key]), method=method, **options)
        results = profile([str(files["baseline"]), str(files["method"])], **showcase.workloads, repeat=repeat,
                          on_step=on_step)
        yield showcase, results, files
