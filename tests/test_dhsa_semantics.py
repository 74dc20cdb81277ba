"""Properties of the DHSA PyTorch reference, checked against independent hand-written attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.errors import InvalidAttributeError, ShapeError
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import single_op_model
from edgekit.runtime_ops.dhsa import chunk_bounds, chunk_membership, chunk_starts, select_keys, token_scores

DHSA = get_op("DHSAAttention")
SMALL = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)


def qkv(B, Hq, Hkv, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g),
            torch.randn(B, Hkv, S, D, generator=g))


def masked_attention(q, k, v, mask, scale=None, softcap=0.0):
    """Plain attention under an explicit (B, Hkv or 1, S, S) bool mask; GQA by repeating K/V heads."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = mask.repeat_interleave(group, dim=1) if mask.shape[1] > 1 else mask
    logits = q @ k.transpose(-1, -2) * (scale or 1.0 / math.sqrt(q.shape[-1]))  # (B, Hq, S, S)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def causal_window_mask(S, window=0):
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    mask = j <= i
    if window:
        mask &= i - j < window
    return mask[None, None]  # (1, 1, S, S)


# ---------------------------------------------------------------------------------------------------
# budget >= S: DHSA is dense attention


@pytest.mark.parametrize("shape, attrs", [
    ((1, 4, 2, 1, 16), SMALL),
    ((1, 4, 2, 37, 16), SMALL),
    ((2, 6, 2, 64, 8), SMALL),  # S == budget
    ((1, 2, 2, 100, 32), {}),  # defaults: budget 2048
    ((2, 4, 1, 90, 16), dict(SMALL, budget_tokens=90, adaptive_chunks=0, length_scaled=0)),
], ids=["S1", "S37", "S_eq_budget_gqa3_batch2", "defaults_gqa1", "fixed_plain_gqa4"])
def test_full_budget_equals_sdpa(shape, attrs):
    q, k, v = qkv(*shape)
    group = q.shape[1] // k.shape[1]
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                              is_causal=True)
    torch.testing.assert_close(DHSA(q, k, v, **attrs), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("extra", [
    dict(sliding_window=10),  # smaller than block_size and local_tokens
    dict(sliding_window=40),
    dict(softcap=2.0),
    dict(sliding_window=24, softcap=5.0, scale=0.4),
], ids=["window10", "window40", "softcap2", "window_softcap_scale"])
def test_full_budget_equals_masked_dense_with_window_and_softcap(extra):
    q, k, v = qkv(1, 4, 2, 120, 16)
    attrs = dict(SMALL, budget_tokens=128, **extra)
    expected = masked_attention(q, k, v, causal_window_mask(120, extra.get("sliding_window", 0)),
                                scale=extra.get("scale"), softcap=extra.get("softcap", 0.0))
    torch.testing.assert_close(DHSA(q, k, v, **attrs), expected, rtol=0, atol=1e-5)


def test_softcap_and_window_change_the_output():
    """Guards the two tests above: the features must matter at these sizes, else they prove nothing."""
    q, k, v = qkv(1, 4, 2, 120, 16)
    plain = DHSA(q, k, v, **dict(SMALL, budget_tokens=128))
    for extra in (dict(sliding_window=10), dict(softcap=2.0)):
        assert (DHSA(q, k, v, **dict(SMALL, budget_tokens=128, **extra)) - plain).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------
# S > budget: the selection and the sparse output


def test_sparse_output_differs_from_dense():
    q, k, v = qkv(1, 4, 2, 300, 16)
    dense = masked_attention(q, k, v, causal_window_mask(300))
    sparse = DHSA(q, k, v, **SMALL)
    assert (sparse - dense).abs().max() > 1e-2
    # the first block sees fewer keys than the budget: it is still exact
    torch.testing.assert_close(sparse[:, :, :16], dense[:, :, :16], rtol=0, atol=1e-5)


SELECTION_CASES = {
    "small": dict(SMALL),
    "ragged_gqa3": dict(SMALL, block_size=12, chunk_size=7, budget_tokens=50),
    "no_sink_no_local": dict(SMALL, sink_tokens=0, local_tokens=0, budget_tokens=24),
    "fixed_plain": dict(SMALL, adaptive_chunks=0, length_scaled=0),
    "mean_score": dict(SMALL, chunk_score=0),
    "bound_score": dict(SMALL, chunk_score=1),
    "mean_score_plain": dict(SMALL, chunk_score=0, length_scaled=0),
    "window_softcap": dict(SMALL, sliding_window=40, softcap=3.0),
    "window_lt_block": dict(SMALL, sliding_window=10),
}


def _selection(name):
    attrs = DHSA.resolve(**SELECTION_CASES[name])
    Hq = 6 if name == "ragged_gqa3" else 4
    q, k, v = qkv(2, Hq, 2, 150, 16, seed=1)
    return q, k, v, attrs, select_keys(q, k, **attrs)


@pytest.mark.parametrize("name", SELECTION_CASES)
def test_select_keys_keeps_forced_keys_without_duplicates(name):
    q, _, _, attrs, kept = _selection(name)
    S, L, window = q.shape[2], attrs["block_size"], attrs["sliding_window"]
    n_blocks = -(-S // L)
    assert kept.shape == (2, 2, n_blocks, min(attrs["budget_tokens"], S))
    for b, h, blk in np.ndindex(2, 2, n_blocks):
        chosen = kept[b, h, blk].tolist()
        assert len(set(chosen)) == len(chosen), f"duplicates in block {blk}"
        start, last = blk * L, min(blk * L + L, S) - 1
        oldest = start - window + 1 if window else 0  # the oldest key the block's first query sees
        forced = set(range(attrs["sink_tokens"])) | set(range(max(0, start - attrs["local_tokens"]), last + 1))
        forced = {t for t in forced if oldest <= t <= last}
        assert forced <= set(chosen), f"block {blk} drops forced keys {sorted(forced - set(chosen))}"
        visible = set(range(max(0, oldest), last + 1))
        if len(visible) >= attrs["budget_tokens"]:
            assert set(chosen) <= visible, f"block {blk} keeps invisible keys {sorted(set(chosen) - visible)}"
        else:  # fewer visible keys than the budget: every visible key is kept, the rest is padding
            assert visible <= set(chosen)


@pytest.mark.parametrize("name", SELECTION_CASES)
def test_output_is_attention_over_the_kept_visible_keys(name):
    q, k, v, attrs, kept = _selection(name)
    S, L = q.shape[2], attrs["block_size"]
    keep = torch.zeros(2, 2, S, S, dtype=torch.bool)  # (B, Hkv, query, key)
    for b, h, blk in np.ndindex(*kept.shape[:3]):
        keep[b, h, blk * L:(blk + 1) * L, kept[b, h, blk]] = True
    mask = keep & causal_window_mask(S, attrs["sliding_window"])
    expected = masked_attention(q, k, v, mask, scale=attrs["scale"], softcap=attrs["softcap"])
    got = DHSA(q, k, v, **SELECTION_CASES[name])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_selection_follows_the_scores():
    """Plant one key block that every query matches strongly: far-away blocks must pick it."""
    q, k, v = qkv(1, 2, 1, 256, 16, seed=2)
    direction = torch.randn(16)
    k[:, :, 100:108] = direction * 4
    q[:, :, :] += direction
    kept = select_keys(q, k, **DHSA.resolve(**SMALL, adaptive_chunks=0))
    for blk in range(8, 16):  # blocks whose last query is past 108 and whose local keys start after it
        assert set(range(100, 108)) <= set(kept[0, 0, blk].tolist())


def _needle_case():
    """One query of the last block looks for a planted 'needle' chunk; the block's other 15 queries
    and the filler keys share another direction (a question at the end of a long, repetitive text)."""
    g = torch.Generator().manual_seed(5)
    S, D = 256, 16
    filler, needle = torch.randn(D, generator=g), torch.randn(D, generator=g)
    needle -= (needle @ filler) / (filler @ filler) * filler  # orthogonal to the filler
    q = filler + 0.3 * torch.randn(1, 2, S, D, generator=g)
    k = filler + 0.3 * torch.randn(1, 1, S, D, generator=g)
    k[:, :, 40:48] = needle * 2
    q[:, :, 250] = needle * 3  # the "question"
    return q, k


def test_bound_scoring_keeps_a_chunk_that_one_query_wants():
    q, k = _needle_case()
    attrs = DHSA.resolve(**SMALL, adaptive_chunks=0)
    needle = set(range(40, 48))
    for chunk_score in (1, 2):  # the bound alone, and interleaved with the mean (the default)
        assert needle <= set(select_keys(q, k, **dict(attrs, chunk_score=chunk_score))[0, 0, -1].tolist())
    # the block's mean query is mostly filler: the paper's mean scoring keeps filler instead
    for length_scaled in (0, 1):
        mean_kept = set(select_keys(q, k, **dict(attrs, chunk_score=0, length_scaled=length_scaled))[0, 0, -1].tolist())
        assert not needle & mean_kept


def test_both_scores_interleave_the_two_rankings():
    """chunk_score=2 orders a block's visible chunks: the mean's best, the bound's best not yet taken,
    the mean's next, ... (rebuilt here from the two single-score rankings)."""
    q, k, _ = qkv(1, 4, 2, 150, 16, seed=8)
    attrs = dict(block_size=16, chunk_size=8, adaptive_chunks=1, length_scaled=1)
    mean, bound, both = (token_scores(q, k, **attrs, chunk_score=m) for m in (0, 1, 2))
    starts = chunk_starts(k, 8, 1)
    for h, blk in np.ndindex(2, 10):
        visible = [c for c in range(starts.shape[-1]) if starts[0, h, c] <= min(blk * 16 + 15, 149)]
        first_token = starts[0, h].tolist()
        by = lambda scores: sorted(visible, key=lambda c: (-scores[0, h, blk, first_token[c]].item(), c))
        expected, rankings = [], [by(mean), by(bound)]
        for i in range(len(visible)):
            for ranking in rankings:
                if ranking[i] not in expected:
                    expected.append(ranking[i])
        got = sorted(visible, key=lambda c: -both[0, h, blk, first_token[c]].item())
        assert got == expected


def test_chunk_bound_is_the_max_logit_bound():
    """relu(q).max + min(q, 0).min over a chunk's keys bounds q.k of each of them, tightly for one key."""
    q, k, _ = qkv(1, 1, 1, 60, 8, seed=6)
    starts = chunk_starts(k, 8, 1)
    member = chunk_membership(starts, 60)
    high, low = chunk_bounds(k, member)
    bound = q[0, 0].clamp(min=0) @ high[0, 0].T + q[0, 0].clamp(max=0) @ low[0, 0].T  # (S, C)
    logits = q[0, 0] @ k[0, 0].T  # (S, S)
    for c in range(member.shape[2]):
        keys = member[0, 0, c]
        assert (bound[:, c] >= logits[:, keys].amax(-1) - 1e-5).all()
    one_key = chunk_membership(torch.arange(60)[None, None], 60)  # every key its own chunk
    high, low = chunk_bounds(k, one_key)
    torch.testing.assert_close(q[0, 0].clamp(min=0) @ high[0, 0].T + q[0, 0].clamp(max=0) @ low[0, 0].T, logits)


def test_bound_scoring_ignores_the_padding_of_the_last_block():
    """S = 250 pads the last block with 6 zero queries. Every real query scores every chunk below 0, so
    padding that took part in the max would tie all chunks at 0 and keep the lowest positions instead."""
    g = torch.Generator().manual_seed(7)
    filler = torch.randn(16, generator=g)
    q = filler + 0.1 * torch.randn(1, 2, 250, 16, generator=g)
    k = -filler + 0.1 * torch.randn(1, 1, 250, 16, generator=g)
    attrs = DHSA.resolve(**SMALL, adaptive_chunks=0, chunk_score=1)
    kept = set(select_keys(q, k, **attrs)[0, 0, -1].tolist())
    chunks = k[0, 0, :224].view(28, 8, 16)  # fixed chunks the last block may pick
    last = q[0, :, 240:250]
    bound = last.clamp(min=0) @ chunks.amax(1).T + last.clamp(max=0) @ chunks.amin(1).T  # (heads, 10, 28)
    assert (bound < 0).all()
    best = bound.amax(dim=(0, 1))[1:].topk(3).indices + 1  # chunk 0 is sink
    assert best.tolist() != [1, 2, 3]
    for chunk in best.tolist():
        assert set(range(8 * chunk, 8 * chunk + 8)) <= kept
    v = torch.randn_like(k)  # ONNX Runtime masks the padding the same way
    got = _run_single_op(attrs, q, k, v)
    np.testing.assert_allclose(got, DHSA(q, k, v, **attrs).numpy(), rtol=0, atol=1e-5)


def _run_single_op(attrs, q, k, v):
    import onnxruntime as ort

    session = ort.InferenceSession(single_op_model(DHSA, attrs, [q, k, v]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()})[0]


# ---------------------------------------------------------------------------------------------------
# chunk boundaries


def _consecutive_cosine(key: np.ndarray) -> np.ndarray:
    unit = key / (np.linalg.norm(key, axis=-1, keepdims=True) + 1e-6)
    return (unit[..., 1:, :] * unit[..., :-1, :]).sum(-1)  # cos(k_t, k_t-1) at index t - 1


@pytest.mark.parametrize("S, chunk", [(45, 8), (64, 8), (7, 8), (50, 1), (33, 5)])
def test_adaptive_chunk_starts_are_window_cosine_minima(S, chunk):
    _, key, _ = qkv(2, 2, 2, S, 8, seed=3)
    starts = chunk_starts(key, chunk, 1)
    n_chunks = -(-S // chunk)
    assert starts.shape == (2, 2, n_chunks)
    assert (starts[..., 0] == 0).all()
    assert (starts.diff(dim=-1) > 0).all()
    cos = _consecutive_cosine(key.numpy())
    for b, h, j in np.ndindex(2, 2, n_chunks):
        if j == 0:
            continue
        window = range(j * chunk, min((j + 1) * chunk, S))
        best = min(window, key=lambda t: (cos[b, h, t - 1], t))  # lowest cosine, first on ties
        assert starts[b, h, j] == best


@pytest.mark.parametrize("boundaries", [[0, 11, 19, 29, 34], [0, 13, 16, 31, 33]])
def test_adaptive_chunks_find_planted_boundaries(boundaries):
    S, D, chunk = 40, 16, 8
    g = torch.Generator().manual_seed(4)
    key = torch.empty(1, 1, S, D)
    for lo, hi in zip(boundaries, boundaries[1:] + [S]):
        direction = torch.randn(D, generator=g)
        key[0, 0, lo:hi] = direction * (1 + 0.1 * torch.rand(hi - lo, 1, generator=g)) \
            + 0.01 * torch.randn(hi - lo, D, generator=g)
    assert chunk_starts(key, chunk, 1)[0, 0].tolist() == boundaries
    assert chunk_starts(key, chunk, 0)[0, 0].tolist() == [0, 8, 16, 24, 32]


# ---------------------------------------------------------------------------------------------------
# attribute and shape validation


@pytest.mark.parametrize("attrs, named", [
    (dict(SMALL, budget_tokens=0), "budget_tokens"),
    (dict(SMALL, block_size=0), "block_size"),
    (dict(SMALL, chunk_size=0), "chunk_size"),
    (dict(SMALL, budget_tokens=39), "budget_tokens"),  # < sink + local + block = 40
    (dict(SMALL, bogus=3), "bogus"),
    (dict(SMALL, block_size=1.5), "block_size"),
    (dict(SMALL, block_size="16"), "block_size"),
    (dict(SMALL, block_size=True), "block_size"),
    (dict(SMALL, adaptive_chunks=2), "adaptive_chunks"),
    (dict(SMALL, chunk_score=3), "chunk_score"),
    (dict(SMALL, sink_tokens=-1), "sink_tokens"),
    (dict(SMALL, sliding_window=-4), "sliding_window"),
    (dict(SMALL, softcap=-1.0), "softcap"),
], ids=["budget0", "block0", "chunk0", "budget_too_small", "unknown", "float_block", "str_block",
        "bool_block", "adaptive2", "chunk_score3", "negative_sink", "negative_window", "negative_softcap"])
def test_invalid_attribute_is_named(attrs, named):
    q, k, v = qkv(1, 2, 1, 8, 8)
    for call in (lambda: DHSA(q, k, v, **attrs), lambda: single_op_model(DHSA, attrs, [q, k, v]), lambda: DHSA.resolve(**attrs)):
        with pytest.raises(InvalidAttributeError, match=named):
            call()


def test_integral_float_attribute_is_accepted_as_int():
    resolved = DHSA.resolve(**dict(SMALL, block_size=16.0))
    assert resolved["block_size"] == 16 and type(resolved["block_size"]) is int
    assert type(DHSA.resolve(softcap=2)["softcap"]) is float


@pytest.mark.parametrize("shapes", [
    [(4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)],  # 3-D query
    [(1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 8)],  # key / value differ
    [(1, 3, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)],  # Hq not a multiple of Hkv
    [(1, 4, 9, 16), (1, 2, 8, 16), (1, 2, 8, 16)],  # sequence lengths differ
    [(1, 4, 8, 32), (1, 2, 8, 16), (1, 2, 8, 16)],  # head dims differ
    [(2, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)],  # batch differs
    [(1, 4, 8, 16), (1, 2, 8, 16, 1), (1, 2, 8, 16, 1)],  # 5-D key / value
], ids=["query3d", "kv_mismatch", "heads", "seq", "head_dim", "batch", "kv5d"])
def test_wrong_shapes_raise_shape_error(shapes):
    tensors = [torch.randn(*s) for s in shapes]
    with pytest.raises(ShapeError):
        DHSA(*tensors, **SMALL)
