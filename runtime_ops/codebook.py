"""edgekit::CodebookFilter — a task-conditioned codebook bottleneck over a joint embedding.

From "Selective Visual Representations Improve Convergence and Generalization for Embodied AI"
(Eftekhar et al., ICLR 2024). The agent's joint embedding E (visual features fused with the goal, plus
the previous action) is forced through a small learned codebook before the recurrent state sees it, so
only task-relevant information passes:

    P = softmax(Linear(ReLU(E)))            # (..., K) a distribution over K codes
    P = top_k(P)                            # optional: keep the k largest, the rest become 0
    h = P @ C                               # (..., code_dim) C is the learned codebook (K, code_dim)
    filtered = Linear(h)                    # (..., D_out) back to the width the next layer expects

Top-k follows the official code (`topk_softmax` in allenai/procthor-rl): the k largest softmax values
are scattered into zeros and are NOT renormalised, so a row of P sums to at most 1. Ties go to the lower
code index, which is what ONNX `TopK` guarantees; the reference sorts stably to do the same (torch.topk
makes no promise about ties). `top_k = 0` is the dense softmax bottleneck (the official `softmax`
indexing, procthor-rl's default); `top_k >= K` keeps every code and equals it. Training-time dropout on
P (official default 0.1) is not part of inference and is not exported.

Inputs, in data-flow order, weights in `torch.nn.Linear` layout (out, in) so a module's tensors go in
as they are, and weights are inputs so one function body serves any layer:
    embedding     (..., D)           any number of leading dims, also none
    logits_weight (K, D)             code logits = ReLU(E) @ logits_weight^T + logits_bias
    logits_bias   (K,)
    codebook      (K, code_dim)
    out_weight    (D_out, code_dim)  filtered = h @ out_weight^T + out_bias
    out_bias      (D_out,)
Outputs: filtered (..., D_out), typed like the embedding; probabilities (..., K), the P that weighted the
codebook (after top-k), so users can watch code usage.

The ONNX body flattens the leading dims to one (Reshape), runs three MatMuls (not Einsum: every
execution provider and mobile build has MatMul) and restores the leading dims.
"""

from __future__ import annotations

from typing import Sequence

import torch
from onnxscript import FLOAT, script
from onnxscript import opset23 as op
from onnxscript.values import Opset

from edgekit.errors import InvalidAttributeError, ShapeError

from .registry import DOMAIN, DOMAIN_OPSET, Attribute, OpDef, Output, Sample, register

edgekit_opset = Opset(DOMAIN, DOMAIN_OPSET)

INPUTS = ("embedding", "logits_weight", "logits_bias", "codebook", "out_weight", "out_bias")
ATTRIBUTES = (
    Attribute("top_k", 16, "codes kept per row (the k largest probabilities, not renormalised); 0: all",
              minimum=0),
)


def check_shapes(shapes: Sequence[Sequence[int]], attrs: dict) -> None:
    """Weights that do not fit the embedding, or top_k > K (only the weights know K), raise one line."""
    embedding, logits_w, logits_b, codebook, out_w, out_b = (tuple(s) for s in shapes)
    if not embedding:
        raise ShapeError("CodebookFilter: embedding must have at least one dim (..., D), got a scalar")
    d = embedding[-1]
    want = {"logits_weight": (len(logits_w) == 2 and logits_w[1] == d, f"(K, {d})"),
            "logits_bias": (logits_b == logits_w[:1], f"({logits_w[0] if logits_w else 'K'},)"),
            "codebook": (len(codebook) == 2 and codebook[:1] == logits_w[:1], "(K, code_dim)"),
            "out_weight": (len(out_w) == 2 and out_w[1:] == codebook[1:], "(D_out, code_dim)"),
            "out_bias": (out_b == out_w[:1], "(D_out,)")}
    for (name, (ok, expected)), shape in zip(want.items(), shapes[1:]):
        if not ok:
            raise ShapeError(f"CodebookFilter: {name} must be {expected} for embedding {list(embedding)}, "
                             f"got {list(shape)}")
    if attrs["top_k"] > logits_w[0]:
        raise InvalidAttributeError(f"CodebookFilter: top_k ({attrs['top_k']}) must be <= the codebook size "
                                    f"K ({logits_w[0]}); 0 keeps every code")


# ----------------------------------------------------------------------------------------------------
# PyTorch reference


def keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of every row, the rest 0; ties go to the lower index (as ONNX TopK)."""
    if k == 0 or k >= probs.shape[-1]:
        return probs
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(probs).scatter_(-1, order, probs.gather(-1, order))


def codebook_filter(embedding, logits_weight, logits_bias, codebook, out_weight, out_bias, *, top_k):
    """Reference bottleneck: (filtered (..., D_out), probabilities (..., K))."""
    logits = torch.relu(embedding) @ logits_weight.T + logits_bias  # (..., K)
    probs = keep_top_k(logits.softmax(-1), top_k)  # (..., K)
    codes = probs @ codebook  # (..., code_dim)
    return codes @ out_weight.T + out_bias, probs  # (..., D_out), (..., K)


def _reference(*inputs: torch.Tensor, **attrs):
    check_shapes([x.shape for x in inputs], attrs)
    return codebook_filter(*inputs, **attrs)


def _output_shapes(input_shapes: Sequence[Sequence[int]], attrs: dict) -> list[list[int]]:
    check_shapes(input_shapes, attrs)
    lead = list(input_shapes[0][:-1])
    return [lead + [input_shapes[4][0]], lead + [input_shapes[1][0]]]


# ----------------------------------------------------------------------------------------------------
# ONNX function body (opset 23). N = product of the leading dims.


@script(edgekit_opset, default_opset=op)
def CodebookFilter(
    embedding: FLOAT,
    logits_weight: FLOAT,
    logits_bias: FLOAT,
    codebook: FLOAT,
    out_weight: FLOAT,
    out_bias: FLOAT,
    top_k: int = 16,
) -> tuple[FLOAT, FLOAT]:
    last = op.Constant(value_ints=[-1])
    lead = op.Shape(embedding, start=0, end=-1)  # the leading dims, maybe none
    rows = op.Concat(op.Constant(value_ints=[-1]), op.Shape(embedding, start=-1), axis=0)
    x = op.Reshape(op.Relu(embedding), rows)  # (N, D)
    logits = op.Add(op.MatMul(x, op.Transpose(logits_weight, perm=[1, 0])), logits_bias)  # (N, K)
    dense = op.Softmax(logits, axis=-1)  # (N, K)
    k = op.Constant(value_int=top_k)
    n_codes = op.Shape(logits_weight, start=0, end=1)
    if op.And(k > op.Constant(value_int=0), op.Squeeze(op.Reshape(k, last) < n_codes)):
        # TopK: ties resolve to the lower index; the kept values are not renormalised (official code)
        values, indices = op.TopK(dense, op.Reshape(k, last), axis=-1, largest=1, sorted=1)  # (N, k)
        zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), dense), op.Shape(dense))
        probs = op.ScatterElements(zeros, indices, values, axis=-1)  # (N, K)
    else:
        probs = op.Identity(dense)
    codes = op.MatMul(probs, codebook)  # (N, code_dim)
    out = op.Add(op.MatMul(codes, op.Transpose(out_weight, perm=[1, 0])), out_bias)  # (N, D_out)
    filtered = op.Reshape(out, op.Concat(lead, op.Shape(out_weight, start=0, end=1), axis=0))
    probabilities = op.Reshape(probs, op.Concat(lead, n_codes, axis=0))
    return filtered, probabilities


# ----------------------------------------------------------------------------------------------------
# Parity-table samples


def _sample(name, lead, D, K, code_dim, D_out=None, atol=1e-5, ties=False, **attrs) -> Sample:
    D_out = D if D_out is None else D_out

    def inputs(seed: int = 0) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        tensors = [torch.randn(*lead, D, generator=g),  # embedding (..., D)
                   torch.randn(K, D, generator=g) / D ** 0.5,  # logits_weight (K, D)
                   torch.randn(K, generator=g),  # logits_bias (K,)
                   torch.randn(K, code_dim, generator=g),  # codebook (K, code_dim)
                   torch.randn(D_out, code_dim, generator=g) / code_dim ** 0.5,  # out_weight (D_out, code_dim)
                   torch.randn(D_out, generator=g)]  # out_bias (D_out,)
        if ties:  # every row sees the same few logit values: top-k must break ties by index
            tensors[1] = torch.zeros(K, D)
            tensors[2] = torch.arange(K).remainder(3).to(torch.float32)
        return tensors

    return Sample(name, inputs, attrs, atol)


def samples() -> list[Sample]:
    s = _sample
    return [
        s("default_top16_K256", (2,), 64, 256, 10),
        s("dense_top0", (3,), 64, 256, 10, top_k=0),
        s("top_k_eq_K37", (4,), 32, 37, 10, top_k=37),
        s("K37_top5", (5,), 24, 37, 10, top_k=5),
        s("K100_top16_batch7", (7,), 48, 100, 10),
        s("top1", (3,), 16, 20, 4, top_k=1),
        s("lead_rank0", (), 16, 37, 6, top_k=3),
        s("lead_rank2_time_batch", (3, 4), 40, 100, 10, top_k=8),
        s("lead_rank3", (2, 3, 5), 12, 37, 10, top_k=4),
        s("lead_rank3_dense", (2, 3, 5), 12, 37, 10, top_k=0),
        s("D_out_ne_D", (4,), 48, 64, 10, D_out=20),
        s("code_dim1", (6,), 20, 50, 1, top_k=7),
        s("code_dim32_D_out96", (6,), 24, 64, 32, D_out=96),
        s("ties_break_to_lower_index", (4,), 16, 37, 10, top_k=5, ties=True),
        s("ties_top_k_eq_K", (2,), 16, 12, 3, top_k=12, ties=True),
        s("policy_width_batch16", (16,), 1574, 256, 10, atol=2e-5),
        s("policy_width_dense_batch16", (16,), 1574, 256, 10, atol=2e-5, top_k=0),
    ]


CODEBOOK = register(
    OpDef(
        name="CodebookFilter",
        version=1,
        doc=__doc__.split("\n\n")[0],
        inputs=INPUTS,
        outputs=(Output("filtered"), Output("probabilities")),
        attributes=ATTRIBUTES,
        reference=_reference,
        function=CodebookFilter,
        output_shapes=_output_shapes,
        samples=samples,
    )
)
