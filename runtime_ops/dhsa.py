"""edgekit::DHSAAttention — dynamic hierarchical sparse attention for long-context prefill.

From "Long-Context Modeling with Dynamic Hierarchical Sparse Attention for On-Device LLMs" (2025),
training-free. Per (batch, KV head):

1. Split keys into chunks. Adaptive (default): the sequence is cut into windows of `chunk_size` keys
   and in every window but the first a new chunk starts where consecutive keys are least similar
   (lowest cosine). This keeps the chunk count fixed (ceil(S / chunk_size)) while the boundaries follow
   the content. Fixed: chunks of exactly `chunk_size`.
2. Score every chunk for every query block of `block_size` tokens, one of three ways (`chunk_score`):
   0 "mean", the paper's: a chunk is represented by the sum of its keys divided by sqrt(length)
     (`length_scaled=0`: plain mean), the block likewise from its queries (averaged over the query heads
     sharing the KV head), and scored by their dot product;
   1 "bound": a chunk is summarised by the per-channel max and min of its keys, which bound q.k for any
     of its keys (sum_d max(q_d * max_d, q_d * min_d), Quest's criterion); the block takes the max of
     that bound over its queries and over the group's query heads;
   2 "both" (default): the two rankings of the chunks the block can see, taken in turn (the mean's
     best, the bound's best, the mean's second, ...).
   Why both: on SmolLM2-135M the mean lost an 8K-token passkey at 10% depth (a block holding a question
   is mostly filler, so its mean query ranks chunks by filler: the needle's chunk made the last block's
   budget in 1 of the 11 (layer, KV head) pairs that attend to it in dense attention; with the bound, in
   all 11), while the bound alone lost two keys the mean found. BENCHMARKS.md has the sweep.
3. Chunk scores are upsampled to tokens: every key gets its chunk's score. Each query block keeps its
   `budget_tokens` best causal keys, always keeping the first `sink_tokens` keys and its "local" keys:
   its own tokens plus the `local_tokens` keys before it. Ties are broken towards the lower position,
   so the selection is deterministic.
4. Attention runs over the kept keys only, causal (and within `sliding_window` if set, with Gemma2's
   logit `softcap` if set). When S <= budget every key is kept: the op equals dense causal attention.

Versions: 1 scored chunks by the mean alone; 2 made the bound the default; 3 (this one) made the
interleaved ranking (`chunk_score=2`) the default and reduces chunk sums over two key windows.

Inputs: query (B, Hq, S, D) after RoPE, key and value (B, Hkv, S, D) with Hq % Hkv == 0 (GQA).
Output: (B, Hq, S, D).

The ONNX body runs ONNX `Attention` directly (the fused is_causal node of the dense export) when
S <= budget. Otherwise, without a window, the first floor(K / block_size) blocks see at most K keys, so keep
all of them: one fused causal `Attention`. Every later block keeps its own keys (they are local) and the
top K - block_size earlier keys; a `Loop` over slices of blocks (~4096 queries a step) gathers those and
passes them as `Attention`'s past key/value, whose causal mask is aligned to the end: each query sees all
of them and its block's keys up to itself, with no mask tensor. The work is a few large MatMuls, never an
S x S matrix, and peak memory stays flat as S grows. A window needs a mask (built per step).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset23 as op
from onnxscript.values import Opset

from edgekit.errors import InvalidAttributeError

from .attention_inputs import check_qkv, qkv_sample
from .registry import DOMAIN, DOMAIN_OPSET, Attribute, OpDef, Output, Sample, register

edgekit_opset = Opset(DOMAIN, DOMAIN_OPSET)
QUERIES_PER_STEP = 4096  # queries per Loop step of the ONNX body: large Attention batches, few Concat copies

ATTRIBUTES = (
    Attribute("block_size", 128, "query tokens that share one key selection", minimum=1),
    Attribute("chunk_size", 64, "target key-chunk length (adaptive chunks are 1 .. 2*chunk_size-1)", minimum=1),
    Attribute("adaptive_chunks", 1, "1: boundaries where consecutive keys are least similar; 0: fixed", 0, 1),
    Attribute("length_scaled", 1, "mean score: 1: representation = sum / sqrt(len); 0: plain mean", 0, 1),
    Attribute("chunk_score", 2, "0: mean query . chunk representation (paper); 1: max over the block's "
              "queries of a bound on q.k in the chunk; 2: both, rankings interleaved", 0, 2),
    Attribute("budget_tokens", 2048, "keys each query block attends to", minimum=1),
    Attribute("sink_tokens", 128, "first keys always kept", minimum=0),
    Attribute("local_tokens", 128, "keys right before each query block always kept", minimum=0),
    Attribute("sliding_window", 0, "0: off; else a query sees only the last N positions (Gemma2)", minimum=0),
    Attribute("softcap", 0.0, "0: off; else logits = softcap * tanh(logits / softcap) (Gemma2)", minimum=0.0),
    Attribute("scale", 0.0, "logit scale; 0 means 1/sqrt(head_dim)", minimum=0.0),
)


def _check_budget(attrs: dict) -> None:
    always_kept = attrs["sink_tokens"] + attrs["local_tokens"] + attrs["block_size"]
    if attrs["budget_tokens"] < always_kept:
        raise InvalidAttributeError(
            f"budget_tokens ({attrs['budget_tokens']}) must cover sink_tokens + local_tokens + block_size "
            f"({always_kept}): those keys are always kept"
        )


# ----------------------------------------------------------------------------------------------------
# PyTorch reference: token-level masks, written for clarity, not speed.


def _norm(lengths: torch.Tensor, length_scaled: int) -> torch.Tensor:
    lengths = lengths.to(torch.float32)
    return lengths.sqrt() if length_scaled else lengths


def chunk_starts(key: torch.Tensor, chunk_size: int, adaptive: int) -> torch.Tensor:
    """First position of every key chunk, (B, Hkv, n_chunks); chunk 0 always starts at 0."""
    B, H, S, _ = key.shape
    n_chunks = -(-S // chunk_size)
    fixed = torch.arange(n_chunks) * chunk_size
    if not adaptive:
        return fixed.expand(B, H, n_chunks).clone()
    unit = key / (key.norm(dim=-1, keepdim=True) + 1e-6)
    similarity = torch.full((B, H, n_chunks * chunk_size), float("inf"))
    similarity[..., 1:S] = (unit[..., 1:, :] * unit[..., :-1, :]).sum(-1)  # cos(k_t, k_t-1)
    offsets = similarity.view(B, H, n_chunks, chunk_size).argmin(-1)  # first minimum wins
    starts = fixed + offsets
    starts[..., 0] = 0
    return starts


def chunk_membership(starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, Hkv, n_chunks, S) bool: key t belongs to chunk j."""
    ends = torch.cat([starts[..., 1:], torch.full_like(starts[..., :1], seq_len)], dim=-1)
    pos = torch.arange(seq_len)
    return (pos >= starts[..., None]) & (pos < ends[..., None])


def chunk_bounds(key: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel max and min of every chunk's keys, each (B, Hkv, C, D)."""
    inside = member[..., None]  # (B, Hkv, C, S, 1)
    keys = key[:, :, None]  # (B, Hkv, 1, S, D)
    return (keys.masked_fill(~inside, float("-inf")).amax(3), keys.masked_fill(~inside, float("inf")).amin(3))


def chunk_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every chunk along the last axis, 0 = best; ties go to the lower index (as ONNX TopK)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))


def bound_scores(blocks: torch.Tensor, key: torch.Tensor, member: torch.Tensor, seq_len: int) -> torch.Tensor:
    """"bound": max over a block's queries (and the group's heads) of a bound on q.k in each chunk.

    max(q * high, q * low) per channel = relu(q) * high + min(q, 0) * low: two matmuls.
    `blocks` (B, Hkv, G, NB, L, D) are the queries, zero-padded to whole blocks; returns (B, Hkv, NB, C).
    """
    n_blocks, block_size = blocks.shape[3:5]
    high, low = chunk_bounds(key, member)
    bound = (blocks.clamp(min=0) @ high[:, :, None, None].transpose(-1, -2)
             + blocks.clamp(max=0) @ low[:, :, None, None].transpose(-1, -2))  # (B, Hkv, G, NB, L, C)
    padding = (torch.arange(n_blocks * block_size) >= seq_len).view(n_blocks, block_size, 1)
    return bound.masked_fill(padding, float("-inf")).amax(dim=(2, 4))


def mean_scores(blocks: torch.Tensor, key: torch.Tensor, member: torch.Tensor, seq_len: int,
                length_scaled: int) -> torch.Tensor:
    """"mean" (the paper): the block's mean query . each chunk's representation, (B, Hkv, NB, C)."""
    n_blocks, block_size = blocks.shape[3:5]
    member_f = member.to(key.dtype)
    chunk_rep = (member_f @ key) / _norm(member_f.sum(-1), length_scaled)[..., None]  # (B, Hkv, C, D)
    block_len = (seq_len - torch.arange(n_blocks) * block_size).clamp(max=block_size)
    block_rep = blocks.sum(4).mean(2) / _norm(block_len, length_scaled)[:, None]  # (B, Hkv, NB, D)
    return block_rep @ chunk_rep.transpose(-1, -2)


def token_scores(query, key, block_size, chunk_size, adaptive_chunks, length_scaled, chunk_score) -> torch.Tensor:
    """Importance of every key for every query block, (B, Hkv, n_blocks, S)."""
    B, Hq, S, D = query.shape
    Hkv = key.shape[1]
    starts = chunk_starts(key, chunk_size, adaptive_chunks)
    member = chunk_membership(starts, S)
    n_blocks = -(-S // block_size)
    padded = torch.nn.functional.pad(query, (0, 0, 0, n_blocks * block_size - S))
    blocks = padded.view(B, Hkv, Hq // Hkv, n_blocks, block_size, D)

    if chunk_score == 0:
        chunk_scores = mean_scores(blocks, key, member, S, length_scaled)
    elif chunk_score == 1:
        chunk_scores = bound_scores(blocks, key, member, S)
    else:  # "both": interleave the two rankings of the chunks a block can see, the mean's pick first
        last_query = (torch.arange(n_blocks) * block_size + block_size).clamp(max=S) - 1
        can_see = starts[:, :, None, :] <= last_query[:, None]  # (B, Hkv, NB, C)
        hidden = ~can_see
        bound_rank = chunk_ranks(bound_scores(blocks, key, member, S).masked_fill(hidden, float("-inf")))
        mean_rank = chunk_ranks(mean_scores(blocks, key, member, S, length_scaled).masked_fill(hidden, float("-inf")))
        chunk_scores = -(2 * torch.minimum(bound_rank, mean_rank) + (bound_rank < mean_rank)).to(query.dtype)
    return chunk_scores @ member.to(query.dtype)  # (B, Hkv, NB, S)


def visible_keys(seq_len: int, block_size: int, sliding_window: int) -> torch.Tensor:
    """(n_blocks, S) bool: keys that at least one query of the block may see (causal, window)."""
    pos = torch.arange(seq_len)
    first_query = torch.arange(-(-seq_len // block_size)) * block_size
    last_query = (first_query + block_size).clamp(max=seq_len) - 1
    visible = pos <= last_query[:, None]
    if sliding_window:  # the block's first query sees the oldest keys
        visible &= pos > first_query[:, None] - sliding_window
    return visible


def select_keys(query, key, *, block_size, chunk_size, adaptive_chunks, length_scaled, chunk_score, budget_tokens,
                sink_tokens, local_tokens, sliding_window, **_) -> torch.Tensor:
    """Indices of the keys each query block keeps, (B, Hkv, n_blocks, min(budget, S)); no duplicates."""
    S = query.shape[2]
    scores = token_scores(query, key, block_size, chunk_size, adaptive_chunks, length_scaled, chunk_score)
    visible = visible_keys(S, block_size, sliding_window)
    pos = torch.arange(S)
    block_start = torch.arange(visible.shape[0]) * block_size
    forced = (pos < sink_tokens) | (pos >= block_start[:, None] - local_tokens)
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(forced & visible, float("inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # ties: lower position first
    return order[..., : min(budget_tokens, S)]


def dhsa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **attrs) -> torch.Tensor:
    """Reference DHSA prefill: dense attention under the token mask that the selection defines."""
    B, Hq, S, D = query.shape
    group = Hq // key.shape[1]
    block_size = attrs["block_size"]
    kept = select_keys(query, key, **attrs)
    keep = torch.zeros(kept.shape[:-1] + (S,), dtype=torch.bool).scatter_(-1, kept, True)
    keep = keep.repeat_interleave(block_size, dim=2)[:, :, :S]  # (B, Hkv, S, S)
    pos = torch.arange(S)
    allowed = pos[None, :] <= pos[:, None]
    if attrs["sliding_window"]:
        allowed &= pos[:, None] - pos[None, :] < attrs["sliding_window"]
    mask = (keep & allowed).repeat_interleave(group, dim=1)  # (B, Hq, S, S)
    scale = attrs["scale"] or 1.0 / math.sqrt(D)
    logits = query @ key.repeat_interleave(group, dim=1).transpose(-1, -2) * scale
    if attrs["softcap"]:
        logits = attrs["softcap"] * torch.tanh(logits / attrs["softcap"])
    weights = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    return weights @ value.repeat_interleave(group, dim=1)


def _reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **attrs) -> torch.Tensor:
    check_qkv("DHSAAttention", query, key, value)
    return dhsa_attention(query, key, value, **attrs)


def _output_shapes(input_shapes: Sequence[Sequence[int]], attrs: dict) -> list[Sequence[int]]:
    return [input_shapes[0]]


# ----------------------------------------------------------------------------------------------------
# ONNX function body (opset 23). Shapes in comments: B batch, Hq/Hkv heads, G = Hq / Hkv, S sequence,
# D head size, NB query blocks, L = block_size, C key chunks, K = min(budget, S), N = B * Hkv * NB.


@script(edgekit_opset, default_opset=op)
def DHSAAttention(
    query: FLOAT,
    key: FLOAT,
    value: FLOAT,
    block_size: int = 128,
    chunk_size: int = 64,
    adaptive_chunks: int = 1,
    length_scaled: int = 1,
    chunk_score: int = 2,
    budget_tokens: int = 2048,
    sink_tokens: int = 128,
    local_tokens: int = 128,
    sliding_window: int = 0,
    softcap: float = 0.0,
    scale: float = 0.0,
) -> FLOAT:
    one = op.Constant(value_ints=[1])
    seq = op.Shape(query, start=2, end=3)
    budget = op.Reshape(op.Constant(value_int=budget_tokens), one)
    windowed = op.Constant(value_int=sliding_window) > op.Constant(value_int=0)
    user_scale = op.CastLike(op.Constant(value_float=scale), query)
    q_scale = op.Where(user_scale > op.CastLike(0.0, query), user_scale,
                       op.Reciprocal(op.Sqrt(op.CastLike(op.Shape(query, start=3, end=4), query))))

    if op.Squeeze(op.And(seq <= budget, op.Not(windowed))):
        # 0. every key fits the budget, so every key is kept: dense causal attention, the fused is_causal
        #    kernel the dense export runs (ORT builds both branches' kernels, and an Attention whose `scale`
        #    is 0 does not build: the scale goes onto the query)
        result = op.Attention(query * q_scale, key, value, is_causal=1, scale=1.0, softcap=softcap)
    else:
        zero = op.Constant(value_ints=[0])
        two = op.Constant(value_ints=[2])
        three = op.Constant(value_ints=[3])
        last_axis = op.Constant(value_ints=[-1])
        batch = op.Shape(query, start=0, end=1)
        q_heads = op.Shape(query, start=1, end=2)
        dim = op.Shape(query, start=3, end=4)
        kv_heads = op.Shape(key, start=1, end=2)
        group = op.Div(q_heads, kv_heads)
        L = op.Reshape(op.Constant(value_int=block_size), one)
        chunk = op.Reshape(op.Constant(value_int=chunk_size), one)
        n_blocks = op.Div(seq + L - one, L)
        n_chunks = op.Div(seq + chunk - one, chunk)
        pos = op.Range(op.Squeeze(zero), op.Squeeze(seq), op.Constant(value_int=1))  # (S,)
        # a finite sentinel in every precision: 3e38 is inf in fp16, so there it becomes fp16's largest, 65504
        big = op.CastLike(op.Constant(value_float=3.0e38), query)
        big = op.Where(op.IsInf(big), op.CastLike(op.Constant(value_float=65504.0), query), big)
        window = op.Constant(value_int=sliding_window)
        window = op.Where(windowed, window, op.Constant(value_int=2**62))
        k = op.Min(budget, seq)

        # 1. chunk boundaries from consecutive-key cosine similarity
        unit = key / (op.ReduceL2(key, last_axis, keepdims=1) + op.CastLike(1e-6, key))
        prev = op.Slice(unit, zero, last_axis, two)
        curr = op.Slice(unit, one, seq, two)
        cos = op.ReduceSum(curr * prev, last_axis, keepdims=0)  # (B, Hkv, S-1)
        tail = n_chunks * chunk - seq  # +inf before t=1 (no predecessor) and past the end
        cos = op.Pad(cos, op.Concat(zero, zero, one, zero, zero, tail, axis=0), big)  # (B, Hkv, C * chunk)
        windows = op.Reshape(cos, op.Concat(batch, kv_heads, n_chunks, chunk, axis=0))
        offsets = op.ArgMin(windows, axis=-1, keepdims=0)  # (B, Hkv, C)
        chunk_index = op.Range(op.Squeeze(zero), op.Squeeze(n_chunks), op.Constant(value_int=1))
        fixed_starts = chunk_index * chunk
        adaptive = op.Cast(op.Constant(value_int=adaptive_chunks), to=BOOL.dtype)
        starts = op.Where(op.And(adaptive, chunk_index > 0), fixed_starts + offsets, fixed_starts)  # increasing
        ends = op.Concat(op.Slice(starts, one, op.Constant(value_ints=[2**62]), last_axis),
                         op.Expand(seq, op.Concat(batch, kv_heads, one, axis=0)), axis=-1)
        # the chunk of every key, (B, Hkv, S): 1 at each chunk start, summed along the keys, minus 1
        is_start = op.ScatterElements(op.Expand(op.Constant(value_ints=[0]), op.Concat(batch, kv_heads, seq, axis=0)),
                                      starts, op.Expand(one, op.Shape(starts)), axis=-1)
        key_chunk = op.CumSum(is_start, op.Constant(value_int=-1)) - one

        # 2. chunk summaries: per-channel max / min of the keys ("bound") and sum / norm ("mean")
        scaled = op.Cast(op.Constant(value_int=length_scaled), to=BOOL.dtype)
        mode = op.Constant(value_int=chunk_score)
        use_mean = mode != op.Constant(value_int=1)
        use_bound = mode != op.Constant(value_int=0)
        # chunk j lies inside windows j and j+1 of `chunk` keys: reduce over that pair, not over all S keys
        k_pad = op.Pad(key, op.Concat(zero, zero, zero, zero, zero, zero, n_chunks * chunk + chunk - seq, zero,
                                      axis=0))
        k_win = op.Reshape(k_pad, op.Concat(batch, kv_heads, n_chunks + one, chunk, dim, axis=0))
        pair = op.Concat(op.Slice(k_win, zero, n_chunks, two), op.Slice(k_win, one, n_chunks + one, two),
                         axis=3)  # (B, Hkv, C, 2 * chunk, D)
        pair_pos = op.Unsqueeze(chunk_index * chunk, one) + op.Range(
            op.Squeeze(zero), op.Squeeze(chunk + chunk), op.Constant(value_int=1))  # (C, 2 * chunk)
        inside = op.And(op.Unsqueeze(starts, last_axis) <= pair_pos, pair_pos < op.Unsqueeze(ends, last_axis))
        inside = op.Unsqueeze(inside, last_axis)  # (B, Hkv, C, 2 * chunk, 1)
        if use_bound:
            high = op.ReduceMax(op.Where(inside, pair, -big), three, keepdims=0)  # (B, Hkv, C, D)
            low = op.ReduceMin(op.Where(inside, pair, big), three, keepdims=0)
            bounds_t = op.Transpose(op.Concat(high, low, axis=-1), perm=[0, 1, 3, 2])  # (B, Hkv, 2D, C)
        else:
            bounds_t = op.Slice(pair, zero, zero, three)  # unused
        if use_mean:
            chunk_len = op.CastLike(ends - starts, query)
            chunk_norm = op.Where(scaled, op.Sqrt(chunk_len), chunk_len)
            chunk_sum = op.ReduceSum(op.Where(inside, pair, op.CastLike(0.0, query)), three, keepdims=0)
            chunk_rep_t = op.Transpose(chunk_sum / op.Unsqueeze(chunk_norm, last_axis),
                                       perm=[0, 1, 3, 2])  # (B, Hkv, D, C)
        else:
            chunk_rep_t = op.Slice(pair, zero, zero, three)  # unused
        rank_values = op.Unsqueeze(chunk_index, op.Constant(value_ints=[0, 1, 2]))  # (1, 1, 1, C): 0, 1, 2, ...

        padded_len = n_blocks * L
        q_pads = op.Concat(zero, zero, zero, zero, zero, zero, padded_len - seq, zero, axis=0)
        block_index = op.Range(op.Squeeze(zero), op.Squeeze(n_blocks), op.Constant(value_int=1))
        block_start = block_index * L
        block_len = op.CastLike(op.Min(seq - block_start, L), query)
        block_norm = op.Unsqueeze(op.Where(scaled, op.Sqrt(block_len), block_len), one)  # (NB, 1)
        if use_mean:  # the block's mean query (over its rows and the group's heads), (B, Hkv, NB, D)
            q_zero = op.Reshape(op.Pad(query, q_pads), op.Concat(batch, kv_heads, group, n_blocks, L, dim, axis=0))
            block_rep = op.ReduceMean(op.ReduceSum(q_zero, op.Constant(value_ints=[4]), keepdims=0), two,
                                      keepdims=0) / block_norm
        else:
            block_rep = op.Slice(query, zero, zero, two)  # unused

        # keys before each block it may see (window) and must keep (sink, local), (NB, S); the block's own
        # keys are always kept (they are local): they are taken whole, not selected
        last_query = op.Unsqueeze(op.Min(block_start + L, seq) - one, one)  # (NB, 1)
        starts_at = op.Unsqueeze(block_start, one)  # (NB, 1)
        visible_pre = op.And(pos < starts_at, pos > starts_at - window)
        sink = op.Constant(value_int=sink_tokens)
        local = op.Constant(value_int=local_tokens)
        forced_pre = op.And(op.Or(pos < sink, pos >= starts_at - local), visible_pre)

        # 3. without a window, a block that sees at most K keys keeps all of them: the first floor(K / L)
        #    blocks are dense causal attention, one fused is_causal node
        if windowed:
            first = op.Constant(value_ints=[0])
            head = op.Slice(query, zero, zero, two)  # (B, Hq, 0, D)
        else:
            first = op.Div(k, L)
            prefix = first * L
            head = op.Attention(op.Slice(query, zero, prefix, two) * q_scale, op.Slice(key, zero, prefix, two),
                                op.Slice(value, zero, prefix, two), is_causal=1, scale=1.0, softcap=softcap)

        # 4. per Loop step, a slice of whole blocks (~4096 queries; the ragged last block in a step of its
        #    own): score chunks, give every earlier key its chunk's score, keep the top K - L of them, gather
        #    them and attend over them (the cache: every query sees all of them) and the block's own keys
        #    (causal); memory does not grow with S
        head_base = op.Range(op.Squeeze(zero), op.Squeeze(batch * kv_heads), op.Constant(value_int=1)) * seq
        head_base = op.Reshape(head_base, op.Concat(batch, kv_heads, one, one, axis=0))
        rows = op.Concat(last_axis, dim, axis=0)
        key_rows = op.Reshape(key, rows)  # (B * Hkv * S, D)
        value_rows = op.Reshape(value, rows)
        key_chunk = op.Unsqueeze(key_chunk, two)  # (B, Hkv, 1, S)
        n_full = op.Div(seq, L)
        ragged = seq - n_full * L
        per_step = op.Max(op.Div(op.Constant(value_ints=[QUERIES_PER_STEP]), L), one)  # query blocks per step
        n_mid_steps = op.Div(n_full - first + per_step - one, per_step)
        n_steps = n_mid_steps + op.Cast(ragged > zero, to=INT64.dtype)
        out = op.Slice(query, zero, zero, two)  # (B, Hq, 0, D): grows by one slice per step
        for step in range(op.Squeeze(n_steps)):
            s1 = op.Reshape(step, one)
            whole = s1 < n_mid_steps
            lo = op.Where(whole, first + s1 * per_step, n_full)
            hi = op.Where(whole, op.Min(lo + per_step, n_full), n_full + one)
            count = hi - lo
            own = op.Where(whole, L, ragged)  # the step's block length
            q_lo = lo * L
            q_hi = q_lo + count * own
            q_step = op.Reshape(op.Slice(query, q_lo, q_hi, two),
                                op.Concat(batch, kv_heads, group, count, own, dim, axis=0))  # (B, Hkv, G, T, L, D)
            # only chunks that start before the step's end can matter (chunk j starts at or after j * chunk):
            # score those, not all C, so scoring grows with the keys a block sees, not with S per block
            k_pre = k - own
            span = op.Max((hi - one) * L, k_pre)
            reach = op.Max(span, op.Min(hi * L, seq))
            c_hi = op.Min(op.Div(reach - one, chunk) + one, n_chunks)  # chunks [0, c_hi) can be gathered or seen
            can_see = op.Unsqueeze(op.Slice(starts, zero, c_hi, last_axis), two) <= op.Slice(last_query, lo, hi, zero)
            q_blocks = op.Transpose(q_step, perm=[0, 1, 3, 2, 4, 5])  # (B, Hkv, T, G, L, D): a block's queries together
            if use_bound:
                # "bound": max(q * high, q * low) per channel = relu(q) * high + min(q, 0) * low, one matmul
                # over all the step's queries of a KV head: (T * G * L, 2D) @ (2D, C); the max over a block's
                # G * L queries then reduces one contiguous axis (ORT's reduction over two apart is ~2x slower)
                split = op.Concat(op.Relu(q_blocks), op.Min(q_blocks, op.CastLike(0.0, query)), axis=-1)
                split = op.Reshape(split, op.Concat(batch, kv_heads, last_axis, dim + dim, axis=0))
                bound = op.Reshape(op.MatMul(split, op.Slice(bounds_t, zero, c_hi, last_axis)),
                                   op.Concat(batch, kv_heads, count, last_axis, c_hi, axis=0))  # (B, Hkv, T, G * L, C')
                bound = op.ReduceMax(bound, op.Constant(value_ints=[3]), keepdims=0)  # (B, Hkv, T, C')
            else:
                bound = op.CastLike(can_see, query)  # unused
            if use_mean:
                # "mean": the block's mean query . chunk representation
                mean = op.MatMul(op.Slice(block_rep, lo, hi, two),
                                 op.Slice(chunk_rep_t, zero, c_hi, last_axis))  # (B, Hkv, T, C')
            else:
                mean = bound
            if op.And(use_mean, use_bound):
                # "both": interleave the two rankings of the chunks the block can see, the mean's first
                _, by_bound = op.TopK(op.Where(can_see, bound, -big), c_hi, axis=-1, largest=1, sorted=1)
                _, by_mean = op.TopK(op.Where(can_see, mean, -big), c_hi, axis=-1, largest=1, sorted=1)
                ranks = op.Expand(op.Slice(rank_values, zero, c_hi, last_axis), op.Shape(by_bound))
                bound_rank = op.ScatterElements(by_bound, by_bound, ranks, axis=-1)
                mean_rank = op.ScatterElements(by_mean, by_mean, ranks, axis=-1)
                chunk_scores = op.Neg(op.CastLike(op.Min(bound_rank, mean_rank) * two
                                                  + op.Cast(bound_rank < mean_rank, to=INT64.dtype), query))
            else:
                chunk_scores = op.Identity(mean)
            # every key before the step's last block takes its chunk's score (a gather, exactly what the 0/1
            # membership matmul gave); later keys are no candidates (a window keeps K - L of them: masked)
            step_chunk = op.Expand(op.Slice(key_chunk, zero, span, three), op.Concat(batch, kv_heads, count, span,
                                                                                   axis=0))
            scores = op.GatherElements(chunk_scores, step_chunk, axis=-1)  # (B, Hkv, T, span)
            step_keys = op.Concat(op.Reshape(lo, one), zero, axis=0)
            step_end = op.Concat(op.Reshape(hi, one), span, axis=0)
            scores = op.Where(op.Slice(visible_pre, step_keys, step_end, op.Constant(value_ints=[0, 1])), scores, -big)
            scores = op.Where(op.Slice(forced_pre, step_keys, step_end, op.Constant(value_ints=[0, 1])), big, scores)
            _, kept_s = op.TopK(scores, k_pre, axis=-1, largest=1, sorted=1)  # (B, Hkv, T, K - L)

            n = batch * kv_heads * count
            flat = op.Reshape(kept_s + head_base, last_axis)
            gathered = op.Concat(n, one, k_pre, dim, axis=0)
            k_s = op.Reshape(op.Gather(key_rows, flat, axis=0), gathered)  # (B * Hkv * T, 1, K - L, D)
            v_s = op.Reshape(op.Gather(value_rows, flat, axis=0), gathered)
            own4 = op.Concat(n, one, own, dim, axis=0)
            k_own = op.Reshape(op.Slice(key, q_lo, q_hi, two), own4)  # (B * Hkv * T, 1, L, D)
            v_own = op.Reshape(op.Slice(value, q_lo, q_hi, two), own4)
            q_s = op.Reshape(q_blocks * q_scale, op.Concat(n, group, own, dim, axis=0))  # (B * Hkv * T, G, L, D)
            if windowed:
                qp = op.Unsqueeze(op.Reshape(op.Range(op.Squeeze(q_lo), op.Squeeze(q_hi), op.Constant(value_int=1)),
                                             op.Concat(count, own, axis=0)), last_axis)  # (T, L, 1)
                pre_pos = op.Unsqueeze(kept_s, three)  # (B, Hkv, T, 1, K - L)
                pre_ok = op.And(pre_pos < op.Slice(qp, zero, one, one), pre_pos > qp - window)
                offset = op.Range(op.Squeeze(zero), op.Squeeze(own), op.Constant(value_int=1))
                gap = op.Unsqueeze(offset, one) - offset  # (L, L) query offset - key offset
                own_ok = op.Expand(op.And(gap >= 0, gap < window), op.Concat(batch, kv_heads, count, own, own, axis=0))
                allowed = op.Reshape(op.Concat(pre_ok, own_ok, axis=-1), op.Concat(n, one, own, k, axis=0))
                o, _, _ = op.Attention(q_s, k_own, v_own, allowed, k_s, v_s, scale=1.0, softcap=softcap)
            else:
                o, _, _ = op.Attention(q_s, k_own, v_own, None, k_s, v_s, is_causal=1, scale=1.0, softcap=softcap)
            o = op.Transpose(op.Reshape(o, op.Concat(batch, kv_heads, count, group, own, dim, axis=0)),
                             perm=[0, 1, 3, 2, 4, 5])  # (B, Hkv, G, T, L, D)
            out = op.Concat(out, op.Reshape(o, op.Concat(batch, q_heads, count * own, dim, axis=0)), axis=2)
        result = op.Concat(head, out, axis=2)
    return result


# ----------------------------------------------------------------------------------------------------
# Parity-table samples: small attributes, so S of 50..600 runs the sparse path (budget 64 < S).

SMALL = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)


def _sample(name, B, Hq, Hkv, S, D, atol=1e-5, **attrs) -> Sample:
    return qkv_sample(name, B, Hq, Hkv, S, D, atol, **{**SMALL, **attrs})


def samples() -> list[Sample]:
    s = _sample
    return [
        # sequence lengths around the block, chunk and budget sizes
        s("S1", 1, 2, 1, 1, 8),
        s("S_lt_block", 1, 4, 2, 5, 16),
        s("S_eq_budget", 1, 4, 2, 64, 16),
        s("S_budget_plus_1", 1, 4, 2, 65, 16),
        s("ragged_S150", 1, 4, 2, 150, 16),
        s("ragged_S257_block32_chunk24", 1, 4, 2, 257, 16, block_size=32, chunk_size=24, budget_tokens=96),
        s("S600_block32_budget128", 1, 4, 2, 600, 32, block_size=32, chunk_size=16, budget_tokens=128,
          sink_tokens=16, local_tokens=32),
        # the ONNX body's Loop: S = 2100 takes one step of whole blocks and one for the ragged last block;
        # S = 8600 three of whole blocks (4096 queries each at most) and the ragged one
        s("two_loop_steps_S2100", 1, 2, 1, 2100, 8, block_size=32, chunk_size=16, budget_tokens=96,
          sink_tokens=16, local_tokens=32),
        s("many_loop_steps_S8600", 1, 2, 1, 8600, 4, block_size=64, chunk_size=32, budget_tokens=256,
          sink_tokens=16, local_tokens=64),
        s("chunk_gt_S", 1, 2, 1, 50, 16, chunk_size=64, block_size=8, budget_tokens=32, sink_tokens=4,
          local_tokens=8),
        s("chunk1_block1", 1, 2, 1, 50, 8, chunk_size=1, block_size=1, budget_tokens=32),
        s("minimal_budget", 1, 4, 2, 120, 16, budget_tokens=40),  # = sink + local + block
        s("default_attrs_dense_path", 1, 4, 2, 100, 16, block_size=128, chunk_size=64, budget_tokens=2048,
          sink_tokens=128, local_tokens=128),
        # grouped-query attention: groups 1, 2, 3, 4; batch 2
        s("gqa1", 1, 2, 2, 100, 16),
        s("gqa3", 1, 6, 2, 100, 16),
        s("gqa4", 1, 4, 1, 100, 16),
        s("batch2", 2, 4, 2, 130, 16),
        s("batch2_gqa3", 2, 3, 1, 90, 8),
        # head dims
        s("D8", 1, 4, 2, 100, 8),
        s("D24", 1, 4, 2, 100, 24),
        s("D64", 1, 4, 2, 100, 64),
        # Gemma2 features: softcap, sliding window (larger and smaller than local_tokens / block_size)
        s("softcap", 1, 4, 2, 150, 16, softcap=2.0),
        s("window40", 1, 4, 2, 150, 16, sliding_window=40),
        s("window_lt_local", 1, 4, 2, 150, 16, block_size=8, sliding_window=12),
        s("window_lt_block", 1, 4, 2, 150, 16, sliding_window=10),
        s("window_softcap_scale", 1, 4, 2, 200, 16, sliding_window=48, softcap=5.0, scale=0.5),
        s("scale", 1, 4, 2, 100, 16, scale=0.3),
        # S <= budget: every key is kept (the body's dense branch), with the same Gemma2 features
        s("full_budget_softcap", 1, 4, 2, 60, 16, softcap=2.0),
        s("full_budget_window_lt_block", 1, 4, 2, 60, 16, sliding_window=10),
        s("full_budget_window_softcap_scale", 2, 6, 2, 64, 16, sliding_window=30, softcap=5.0, scale=0.5),
        # chunking and representation variants
        s("fixed_chunks", 1, 4, 2, 150, 16, adaptive_chunks=0),
        s("plain_mean", 1, 4, 2, 150, 16, length_scaled=0),
        s("fixed_plain_mean", 1, 4, 2, 150, 16, adaptive_chunks=0, length_scaled=0),
        s("chunk_size_gt_block", 1, 4, 2, 300, 16, chunk_size=40, budget_tokens=120),
        s("chunk_size_not_dividing_S", 1, 4, 2, 301, 16, chunk_size=13, block_size=20, budget_tokens=90),
        # chunk_score=0: the paper's mean representations (length-scaled or plain), fixed or adaptive chunks
        s("mean_score", 1, 4, 2, 150, 16, chunk_score=0),
        s("mean_score_ragged_gqa3_batch2", 2, 6, 2, 257, 16, chunk_score=0, block_size=32, chunk_size=24,
          budget_tokens=96),
        s("mean_score_plain_fixed", 1, 4, 2, 150, 16, chunk_score=0, length_scaled=0, adaptive_chunks=0),
        s("mean_score_plain_two_steps", 1, 2, 1, 2100, 8, chunk_score=0, length_scaled=0, block_size=32,
          chunk_size=16, budget_tokens=96, sink_tokens=16, local_tokens=32),
        s("mean_score_window_softcap", 1, 4, 2, 200, 16, chunk_score=0, sliding_window=48, softcap=5.0),
        # chunk_score=1: the max-logit bound alone
        s("bound_score", 1, 4, 2, 150, 16, chunk_score=1),
        s("bound_score_ragged_gqa3_batch2", 2, 6, 2, 257, 16, chunk_score=1, block_size=32, chunk_size=24,
          budget_tokens=96),
        s("bound_score_fixed_two_steps", 1, 2, 1, 2100, 8, chunk_score=1, adaptive_chunks=0, block_size=32,
          chunk_size=16, budget_tokens=96, sink_tokens=16, local_tokens=32),
        s("no_sink", 1, 4, 2, 150, 16, sink_tokens=0),
        s("no_local", 1, 4, 2, 150, 16, local_tokens=0),
        s("no_sink_no_local", 1, 4, 2, 150, 16, sink_tokens=0, local_tokens=0, budget_tokens=32),
    ]


DHSA = register(
    OpDef(
        name="DHSAAttention",
        version=3,
        doc=__doc__.split("\n\n")[0],
        inputs=("query", "key", "value"),
        outputs=(Output("output"),),
        attributes=ATTRIBUTES,
        reference=_reference,
        function=DHSAAttention,
        output_shapes=_output_shapes,
        samples=samples,
        check_attributes=_check_budget,
    )
)
