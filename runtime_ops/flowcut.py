"""edgekit::FlowCutPrune — information-flow visual token pruning inside a ViT encoder (one layer's stage).

From "FlowCut: Rethinking Redundancy via Information Flow for Efficient Vision-Language Models" (NeurIPS
2025; official code TungChintao/FlowCut, read to understand, not copied). The CLS token relays what the
patches say to the rest of the model, so a patch matters as much as information flows from it to CLS.
After a layer, for every patch j (head means over the layer's H heads):

    a_j   = softmax_j(q_CLS . k_j * scale)[patches]    CLS's attention row (softmax over all N tokens)
    sim_j = softmax_j(v_CLS . v_j)[patches]              value similarity to CLS (unscaled, as the paper)
    s_j   = (a_j / sum a + sim_j / sum sim) * |mean_h v_j|_1
    cum   = s (first scoring layer) or 0.5 * cum + 0.5 * s

At a pruning stage the count removed adapts to how peaked CLS's attention is (flat attention: prune less):
    rho = H(a / sum a) / log(N - 1),   r = round(max_batch((N - 1 - target) / sqrt(layers_left) * (1 - rho^2)))
and max(N - 1 - r, target) patches with the largest `cum` are kept (layers_left 0: exactly `target`).
The relay token stays first; kept patches stay in their original spatial order. Only the CLS row of the
attention is computed here (from q_CLS and K), so the layer's own attention stays one fused kernel. The scoring
reads q, k and v only and the gather from hidden comes last, so ONNX Runtime can score before the layer's
attention, while K and V are still in cache (a score-only stage's hidden_out waits on its scores for the same
reason).

ONNX has no Sort: the selection is TopK (ties resolve to the lower index, which ONNX guarantees), and the
kept positions are put back in order by a second TopK over the indices. The reference sorts stably on
(-score, index) to break ties the same way; the parity samples are tie-free anyway.

Inputs (one body serves every scoring layer; the exporter chains them):
    hidden   (B, N, C)     the layer's output, relay (CLS) token at position 0
    query    (B, H, N, d)  the layer's attention query / key / value (before the attention)
    key      (B, H, N, d)
    value    (B, H, N, d)
    scores   (B, N - 1)    cumulative scores of the patches (ignored, any values, when accumulate = 0)
    indices  (B, N - 1)    int64: each patch's index in the original (unpruned) patch grid
Outputs: hidden_out (B, M, C), indices_out (B, M - 1) int64, scores_out (B, M - 1).
A stage whose patch count N - 1 is at or below the target (or static_keep) is a no-op: the three inputs
come back unchanged (scores not updated either). `prune = 0` only scores (the official schedule prunes on
every other layer). `static_keep > 0` keeps exactly that many patches: no data-dependent shapes, for
TensorRT / CUDA graphs.

`relay = 0` is the paper's variant for encoders without CLS (its Qwen2-VL code): the mean query relays,
s_j = a_j / sum a * |mean_h v_j|_1 (no value-similarity term), and every token is a candidate: hidden has
no token at 0 to keep, and scores / indices are (B, N).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false
from onnxscript import FLOAT, INT64, script
from onnxscript import opset23 as op
from onnxscript.values import Opset

from edgekit.errors import ShapeError

from .registry import DOMAIN, DOMAIN_OPSET, Attribute, DataDependent, OpDef, Output, Sample, register

edgekit_opset = Opset(DOMAIN, DOMAIN_OPSET)

INPUTS = ("hidden", "query", "key", "value", "scores", "indices")
ATTRIBUTES = (
    Attribute("target", 64, "patches kept once pruning finishes (a stage at or below it is a no-op)", minimum=1),
    Attribute("layers_left", 0, "pruning stages left before the read layer, this one counted from 0; "
              "0 prunes to target exactly", minimum=0),
    Attribute("prune", 1, "1: score and prune; 0: score only", choices=(0, 1)),
    Attribute("accumulate", 1, "1: cum = 0.5 cum + 0.5 s; 0: cum = s (the first scoring layer)", choices=(0, 1)),
    Attribute("static_keep", 0, "> 0: keep exactly this many patches (static shapes); 0: adaptive", minimum=0),
    Attribute("scale", 0.0, "attention scale of q . k; 0: 1 / sqrt(d)", minimum=0.0),
    Attribute("relay", 1, "1: the CLS token at 0 relays (kept, never pruned); 0: no CLS, the mean query relays "
              "and every token is a candidate, scored attention x value norm (the paper's Qwen variant)",
              choices=(0, 1)),
)
TINY = 1e-30  # p log p at p = 0 is taken as 0 (log of TINY, times 0)


def surely(condition) -> bool:
    """True only if the condition holds for every value of the symbolic sizes in it (plain bools as they are)."""
    return guard_or_false(condition) if isinstance(condition, torch.SymBool) else bool(condition)


def check_shapes(shapes: Sequence[Sequence[int]], relay: int = 1) -> None:
    """One line per misfit; while exporting, sizes may be symbolic: only a surely-wrong size raises."""
    hidden, q, k, v, scores, indices = (tuple(s) for s in shapes)
    if len(hidden) != 3 or surely(hidden[1] < 1 + relay):
        raise ShapeError(f"FlowCutPrune: hidden must be (B, N, C) with {'a relay token and ' * relay}patches, "
                         f"got {list(hidden)}")
    b, n = hidden[:2]
    for name, s in (("query", q), ("key", k), ("value", v)):
        if len(s) != 4 or surely(s[0] != b) or surely(s[2] != n):
            raise ShapeError(f"FlowCutPrune: {name} must be (B, H, N, d) = ({b}, H, {n}, d), got {list(s)}")
    for name, s in (("scores", scores), ("indices", indices)):
        if len(s) != 2 or surely(s[0] != b) or surely(s[1] != n - relay):
            raise ShapeError(f"FlowCutPrune: {name} must be (B, N{' - 1' * relay}) = ({b}, {n - relay}), "
                             f"got {list(s)}")


# ----------------------------------------------------------------------------------------------------
# PyTorch reference


def cls_attention(query, key, scale: float, relay: int = 1) -> torch.Tensor:
    """The relay's attention over the candidates, head mean, normalised to sum 1: (B, N - relay)."""
    scale = scale or query.shape[-1] ** -0.5
    q = query[:, :, :1] if relay else query.mean(2, keepdim=True)  # (B, H, 1, d)
    attn = (q @ key.transpose(-1, -2) * scale).softmax(-1).mean((1, 2))[:, relay:]  # (B, N - relay)
    return attn / attn.sum(-1, keepdim=True)


def flow_scores(query, key, value, scale: float, relay: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(s (B, N - relay), the relay's attention normalised to sum 1 (B, N - relay))."""
    p = cls_attention(query, key, scale, relay)
    norm = value.mean(1).abs().sum(-1)[:, relay:]  # (B, N - relay)
    if not relay:
        return p * norm, p
    sim = (value[:, :, :1] @ value.transpose(-1, -2)).softmax(-1).mean((1, 2))[:, 1:]  # (B, N-1)
    return (p + sim / sim.sum(-1, keepdim=True)) * norm, p


def keep_count(p: torch.Tensor, target: int, layers_left: int) -> torch.Tensor:
    """Patches kept at an adaptive stage, a 0-d int64 tensor (tensor ops only: it is traced while exporting,
    where N may be symbolic). Fewer are removed when CLS attends flatly (entropy ratio rho near 1)."""
    n = torch.ones_like(p).sum(-1)  # (B,) N - 1 as a float
    rho = -(p * p.clamp_min(TINY).log()).sum(-1) / n.log()  # (B,)
    r = ((n - target) / math.sqrt(layers_left) * (1 - rho * rho)).max().round()
    return torch.minimum((n[0] - r).clamp_min(target), n[0]).to(torch.int64)


def adaptive_keep(p: torch.Tensor, target: int, layers_left: int) -> int:
    return target if layers_left == 0 else int(keep_count(p, target, layers_left))


def _data_sizes(inputs: Sequence[torch.Tensor], attrs: dict) -> dict[str, torch.Tensor]:
    """While exporting: the adaptive count as a traced tensor, so downstream shapes follow the real one."""
    p = cls_attention(inputs[1], inputs[2], attrs["scale"], attrs["relay"])
    return {"n": keep_count(p, attrs["target"], attrs["layers_left"])}


def stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest per row, ties to the lower index (as ONNX TopK), then in ascending order."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return order.sort(-1).values  # (B, k)


def flowcut_prune(hidden, query, key, value, scores, indices, *, target, layers_left, prune, accumulate,
                  static_keep, scale, relay):
    n = hidden.shape[1] - relay
    if n <= (static_keep or target):
        return hidden, indices, scores
    s, p = flow_scores(query, key, value, scale, relay)
    cum = 0.5 * scores + 0.5 * s if accumulate else s
    if not prune:
        return hidden, indices, cum
    keep = static_keep or adaptive_keep(p, target, layers_left)
    kept = stable_top(cum, keep)  # (B, keep)
    patches = hidden[:, relay:].gather(1, kept[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, keep, C)
    return torch.cat([hidden[:, :relay], patches], 1), indices.gather(1, kept), cum.gather(1, kept)


def _reference(*inputs: torch.Tensor, **attrs):
    check_shapes([x.shape for x in inputs], attrs["relay"])
    return flowcut_prune(*inputs, **attrs)


def schedule_keep(n: int, target: int, layers_left: int) -> int:
    """The count an adaptive stage keeps at rho = 0 (the most it may prune): a fixed trace-time size and the
    default static schedule."""
    if n <= target:
        return n
    if layers_left == 0:
        return target
    return max(n - round((n - target) / math.sqrt(layers_left)), target)


def _output_shapes(input_shapes: Sequence[Sequence[int]], attrs: dict) -> list[list]:
    """An adaptive stage's count is data-dependent in [target, N - 1] (exported as an unbacked size); static
    mode, score-only stages, no-op stages and the last stage (layers_left 0) know theirs."""
    relay = attrs["relay"]
    check_shapes(input_shapes, relay)
    b, n1, c = input_shapes[0]
    n, target = n1 - relay, attrs["target"]
    if not attrs["prune"] or surely(n <= (attrs["static_keep"] or target)):
        m = n
    elif attrs["static_keep"]:
        m = attrs["static_keep"]
    elif attrs["layers_left"] == 0:
        m = target
    else:
        m = DataDependent(target, n)
        return [[b, dataclasses.replace(m, plus=relay), c], [b, m], [b, m]]
    return [[b, m + relay, c], [b, m], [b, m]]


# ----------------------------------------------------------------------------------------------------
# ONNX function body (opset 23)


@script(edgekit_opset, default_opset=op)
def FlowCutPrune(
    hidden: FLOAT,
    query: FLOAT,
    key: FLOAT,
    value: FLOAT,
    scores: FLOAT,
    indices: INT64,
    target: int = 64,
    layers_left: int = 0,
    prune: int = 1,
    accumulate: int = 1,
    static_keep: int = 0,
    scale: float = 0.0,
    relay: int = 1,
) -> tuple[FLOAT, INT64, FLOAT]:
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    end = op.Constant(value_ints=[9223372036854775807])
    off = op.Reshape(op.Constant(value_int=relay), one)  # (1,) 1: CLS at 0, 0: no relay token
    use_cls = op.Cast(op.Constant(value_int=relay), to=9)
    # the candidates counted from the query, not hidden: the scoring If below then needs nothing the MLP makes,
    # so ONNX Runtime can run it while the layer's K and V are still in cache
    n = op.Sub(op.Shape(query, start=2, end=3), off)  # (1,) candidates
    tgt = op.Reshape(op.Constant(value_int=target), one)
    fixed = op.Reshape(op.Constant(value_int=static_keep), one)
    threshold = op.Where(fixed > zero, fixed, tgt)
    active = op.Squeeze(n > threshold)
    if active:
        # CLS's attention row and its value similarity, head means: (B, H, 1, N) -> (B, N)
        scale_c = op.CastLike(op.Constant(value_float=scale), query)
        if scale_c > op.CastLike(0.0, query):  # a constant condition: ONNX Runtime folds it away
            s = op.Identity(scale_c)
        else:
            s = op.Div(op.CastLike(1.0, query), op.Sqrt(op.CastLike(op.Shape(query, start=3), query)))
        tokens = op.Constant(value_ints=[2])
        if use_cls:
            q_relay = op.Slice(query, zero, one, tokens)  # (B, H, 1, d)
        else:
            q_relay = op.ReduceMean(query, tokens, keepdims=1)  # (B, H, 1, d) the mean query
        logits = op.Mul(op.MatMul(q_relay, op.Transpose(key, perm=[0, 1, 3, 2])), s)  # (B, H, 1, N)
        heads = op.Constant(value_ints=[1, 2])
        attn = op.ReduceMean(op.Softmax(logits, axis=-1), heads, keepdims=0)  # (B, N)
        last = op.Constant(value_ints=[-1])
        # the head mean of the values as one MatMul by 1/H weights (ORT's ReduceMean over heads is ~4x slower)
        h = op.Shape(value, start=1, end=2)
        w = op.Div(op.CastLike(op.Expand(op.Constant(value_float=1.0), op.Concat(one, one, h, axis=0)), value),
                   op.CastLike(h, value))  # (1, 1, H)
        flat = op.Reshape(value, op.Concat(op.Shape(value, start=0, end=2), op.Constant(value_ints=[-1]), axis=0))
        v_mean = op.Reshape(op.MatMul(w, flat), op.Concat(op.Shape(value, start=0, end=1), op.Shape(value, start=2),
                                                          axis=0))  # (B, H, N d) -> (B, 1, N d) -> (B, N, d)
        norm = op.ReduceL1(v_mean, last, keepdims=0)  # (B, N)
        attn_p = op.Slice(attn, off, end, one)  # (B, N - relay)
        p = op.Div(attn_p, op.ReduceSum(attn_p, last, keepdims=1))
        norm_p = op.Slice(norm, off, end, one)
        if use_cls:
            v_cls = op.Slice(value, zero, one, tokens)
            sim = op.ReduceMean(op.Softmax(op.MatMul(v_cls, op.Transpose(value, perm=[0, 1, 3, 2])), axis=-1),
                                heads, keepdims=0)  # (B, N)
            sim_p = op.Slice(sim, one, end, one)
            flow = op.Mul(op.Add(p, op.Div(sim_p, op.ReduceSum(sim_p, last, keepdims=1))), norm_p)
        else:
            flow = op.Mul(p, norm_p)
        half = op.CastLike(0.5, flow)
        if op.Cast(op.Constant(value_int=accumulate), to=9):
            cum = op.Add(op.Mul(half, scores), op.Mul(half, flow))
        else:
            cum = op.Identity(flow)
        if op.Cast(op.Constant(value_int=prune), to=9):
            left = op.Reshape(op.Constant(value_int=layers_left), one)
            if op.Squeeze(fixed > zero):
                keep = op.Identity(fixed)
            elif op.Squeeze(left == zero):
                keep = op.Identity(tgt)
            else:
                tiny = op.CastLike(1e-30, p)
                entropy = op.Neg(op.ReduceSum(op.Mul(p, op.Log(op.Max(p, tiny))), last, keepdims=0))  # (B,)
                n_f = op.CastLike(n, p)
                rho = op.Div(entropy, op.Log(n_f))
                span = op.Div(op.Sub(n_f, op.CastLike(tgt, p)), op.Sqrt(op.CastLike(left, p)))
                r = op.Round(op.ReduceMax(op.Mul(span, op.Sub(op.CastLike(1.0, p), op.Mul(rho, rho))), keepdims=1))
                keep = op.Max(op.Sub(n, op.Cast(r, to=7)), tgt)  # (1,)
            # TopK: ties resolve to the lower index; a second TopK restores the original order
            top_v, top = op.TopK(cum, keep, axis=-1, largest=1, sorted=1)  # (B, keep)
            kept, kept_pos = op.TopK(top, keep, axis=-1, largest=0, sorted=1)  # ascending indices
            lead = op.Mul(op.Slice(kept, zero, off, one), zero)  # (B, relay) zeros
            rows = op.Concat(lead, op.Add(kept, off), axis=1)  # (B, relay + keep): the relay's row and the kept
            indices_out = op.GatherElements(indices, kept, axis=1)  # (B, keep)
            scores_out = op.GatherElements(cum, kept, axis=1)
        else:
            rows = op.Identity(indices)  # unread: only a pruning stage gathers
            indices_out = op.Identity(indices)
            scores_out = op.Identity(cum)
    else:
        rows = op.Identity(indices)  # unread
        indices_out = op.Identity(indices)
        scores_out = op.Identity(scores)
    # the only step that needs the layer's output: one gather of the relay's and the kept rows from hidden
    if op.Cast(op.Constant(value_int=prune), to=9):  # constant: folded, so a score-only stage has no If here
        if active:
            hidden_out = op.GatherND(hidden, op.Unsqueeze(rows, op.Constant(value_ints=[-1])), batch_dims=1)
        else:
            hidden_out = op.Identity(hidden)
    else:
        # hidden itself (a Reshape to its own shape: no copy), but with its batch size read from the scores: that
        # makes the next layer wait for this stage, so ONNX Runtime scores while K and V are still in cache
        # instead of just before the next stage reads the scores
        hidden_out = op.Reshape(hidden, op.Concat(op.Shape(scores_out, start=0, end=1), op.Shape(hidden, start=1),
                                                  axis=0))
    return hidden_out, indices_out, scores_out


# ----------------------------------------------------------------------------------------------------
# Parity-table samples


def sample_inputs(B: int, N: int, C: int, H: int, d: int, temperature: float = 1.0, seed: int = 0,
                  accumulate: int = 1, relay: int = 1) -> list[torch.Tensor]:
    """Random layer tensors; `temperature` < 1 peaks CLS's attention (queries scaled up), > 1 flattens it."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, d, generator=g) / temperature
    tensors = [torch.randn(B, N, C, generator=g), q, torch.randn(B, H, N, d, generator=g),
               torch.randn(B, H, N, d, generator=g) / d ** 0.5,
               torch.rand(B, N - relay, generator=g) if accumulate else torch.zeros(B, N - relay),
               torch.arange(N - relay).expand(B, -1).flip(-1).contiguous() * 3]  # any distinct int64 labels
    return tensors


def _sample(name, B, N, C=16, H=4, d=8, temperature=1.0, atol=1e-5, **attrs) -> Sample:
    return Sample(name, lambda: sample_inputs(B, N, C, H, d, temperature, accumulate=attrs.get("accumulate", 1),
                                              relay=attrs.get("relay", 1)), attrs, atol)


def samples() -> list[Sample]:
    s = _sample
    return [
        s("adaptive_last_stage_B1_N65_t16", 1, 65, target=16),
        s("adaptive_B2_N65_t16_left4", 2, 65, target=16, layers_left=4),
        s("adaptive_B3_N101_t20_left9_peaked", 3, 101, target=20, layers_left=9, temperature=0.2),
        s("adaptive_B2_N101_t20_left9_flat", 2, 101, target=20, layers_left=9, temperature=8.0),
        s("adaptive_B1_N577_t64_left8_vit_s", 1, 577, C=384, H=6, d=64, target=64, layers_left=8, atol=2e-5),
        s("adaptive_B2_N577_t64_left8_peaked", 2, 577, C=32, H=6, d=64, target=64, layers_left=8,
          temperature=0.05, atol=2e-5),
        s("adaptive_B2_N577_t192_left2", 2, 577, C=32, H=6, d=64, target=192, layers_left=2, atol=2e-5),
        s("first_layer_no_accumulate", 2, 50, target=10, layers_left=3, accumulate=0),
        s("score_only", 2, 50, target=10, prune=0),
        s("score_only_first", 1, 50, target=10, prune=0, accumulate=0),
        s("at_target_noop", 2, 17, target=16, layers_left=2),
        s("below_target_noop", 2, 9, target=16),
        s("static_keep_B2_N65_keep40", 2, 65, static_keep=40, target=16),
        s("static_keep_B1_N577_keep128", 1, 577, C=32, H=6, d=64, static_keep=128, atol=2e-5),
        s("static_keep_noop", 2, 33, static_keep=32),
        s("explicit_scale", 2, 40, target=8, layers_left=1, scale=0.5),
        s("patch_one_target_one", 1, 3, target=1),
        s("mean_relay_B2_N64_t16_left4_peaked", 2, 64, target=16, layers_left=4, relay=0, temperature=0.05),
        s("mean_relay_last_stage", 2, 64, target=16, relay=0),
        s("mean_relay_static", 1, 100, static_keep=30, relay=0),
        s("mean_relay_noop", 2, 16, target=16, relay=0),
        s("mean_relay_score_only_first", 2, 40, target=8, prune=0, accumulate=0, relay=0),
    ]


FLOWCUT = register(
    OpDef(
        name="FlowCutPrune",
        version=1,
        doc=__doc__.split("\n\n")[0],
        inputs=INPUTS,
        outputs=(Output("hidden_out"), Output("indices_out", torch.int64), Output("scores_out")),
        attributes=ATTRIBUTES,
        reference=_reference,
        function=FlowCutPrune,
        output_shapes=_output_shapes,
        samples=samples,
        data_sizes=_data_sizes,
    )
)
