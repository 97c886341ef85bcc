"""Generated attention kernel vs a naive per-query softmax written here.

The reference decides visibility key by key with plain Python conditions (the contract
of `AttentionFlags`), then takes a float64 softmax over the visible keys only.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from archdsl.codegen.triton.ops import triton_attention

RTOL = 1e-4
ATOL = 1e-4


def visible(i: int, j: int, causal: bool, window: int, prefix: int, sinks: int) -> bool:
    local = (not causal or j <= i) and (window == 0 or abs(i - j) < window)
    in_prefix = i < prefix and j < prefix
    sink = j < sinks and (not causal or j <= i)
    return local or in_prefix or sink


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    window: int,
    prefix: int,
    sinks: int,
    slopes: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    B, T, H, D = q.shape
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for i in range(T):
        keys = [j for j in range(T) if visible(i, j, causal, window, prefix, sinks)]
        idx = torch.tensor(keys)
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, idx]) * scale
        if slopes is not None:
            distance = (i - idx).abs().double()
            scores = scores - slopes.double()[:, None] * distance[None, :]
        probs = scores.softmax(dim=-1)
        out[:, i] = torch.einsum("bhj,bjhd->bhd", probs, v[:, idx])
    return out


def make_qkv(B: int, T: int, H: int, D: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, H, D, generator=gen) for _ in range(3))


def alibi_slopes(H: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-(h + 1)) for h in range(H)])


CAUSAL_COMBOS = list(itertools.product([0, 5], [0, 9], [0, 3], [False, True]))


@pytest.mark.parametrize(("window", "prefix", "sinks", "alibi"), CAUSAL_COMBOS)
def test_causal_masks_match_naive(window: int, prefix: int, sinks: int, alibi: bool) -> None:
    q, k, v = make_qkv(1, 45, 2, 16, seed=window + prefix + sinks)
    slopes = alibi_slopes(2) if alibi else None
    o = triton_attention(
        q, k, v, causal=True, window=window, prefix=prefix, sinks=sinks, alibi_slopes=slopes
    )
    ref = naive_attention(q, k, v, True, window, prefix, sinks, slopes, 16**-0.5)
    torch.testing.assert_close(o.double(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("window", "prefix", "sinks", "alibi"),
    [(0, 0, 0, False), (0, 0, 0, True), (6, 0, 0, False), (6, 0, 40, True), (4, 38, 0, False)],
)
def test_bidirectional_masks_match_naive(window: int, prefix: int, sinks: int, alibi: bool) -> None:
    q, k, v = make_qkv(2, 45, 2, 32, seed=11)
    slopes = alibi_slopes(2) if alibi else None
    o = triton_attention(
        q, k, v, causal=False, window=window, prefix=prefix, sinks=sinks, alibi_slopes=slopes
    )
    ref = naive_attention(q, k, v, False, window, prefix, sinks, slopes, 32**-0.5)
    torch.testing.assert_close(o.double(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("T", "D", "window", "sinks"),
    [
        (67, 32, 0, 0),  # T % BLOCK != 0
        (75, 24, 40, 2),  # padded head dim, window spanning several key blocks
        (7, 16, 0, 0),  # shorter than one block
        (81, 16, 3, 50),  # sinks reaching past the query block (skipped range stays exact)
    ],
)
def test_shapes_and_block_ranges(T: int, D: int, window: int, sinks: int) -> None:
    q, k, v = make_qkv(1, T, 2, D, seed=T)
    o = triton_attention(q, k, v, window=window, sinks=sinks, scale=0.2)
    ref = naive_attention(q, k, v, True, window, 0, sinks, None, 0.2)
    torch.testing.assert_close(o.double(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("causal", "window", "prefix", "sinks", "alibi"),
    [
        (True, 0, 0, 0, False),
        (True, 5, 7, 2, True),
        (False, 6, 0, 0, False),
        (False, 4, 0, 40, True),  # bidirectional sinks: every query block sees key block 0
        (True, 3, 38, 0, False),  # prefix spanning several blocks (queries before keys)
    ],
)
def test_gradients_match_naive(
    causal: bool, window: int, prefix: int, sinks: int, alibi: bool
) -> None:
    q, k, v = make_qkv(1, 33, 2, 16, seed=21)
    slopes = alibi_slopes(2) if alibi else None
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    refs = [t.double().requires_grad_(True) for t in (q, k, v)]
    do = torch.randn(1, 33, 2, 16, generator=torch.Generator().manual_seed(22))
    o = triton_attention(
        *leaves, causal=causal, window=window, prefix=prefix, sinks=sinks, alibi_slopes=slopes
    )
    (o * do).sum().backward()
    ref = naive_attention(*refs, causal, window, prefix, sinks, slopes, 16**-0.5)
    (ref * do.double()).sum().backward()
    for leaf, r in zip(leaves, refs):
        assert leaf.grad is not None and r.grad is not None
        torch.testing.assert_close(leaf.grad.double(), r.grad, rtol=RTOL, atol=ATOL)


def test_alibi_slopes_need_the_flag() -> None:
    q, k, v = make_qkv(1, 8, 2, 16, seed=0)
    with pytest.raises(ValueError, match="alibi_slopes"):
        triton_attention(q, k, v, alibi_slopes=torch.ones(3))


def test_gradients_for_padded_head_dim_and_ragged_length() -> None:
    q, k, v = make_qkv(1, 50, 2, 24, seed=31)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    refs = [t.double().requires_grad_(True) for t in (q, k, v)]
    do = torch.randn(1, 50, 2, 24, generator=torch.Generator().manual_seed(32))
    (triton_attention(*leaves, window=20, sinks=1, scale=0.3) * do).sum().backward()
    (naive_attention(*refs, True, 20, 0, 1, None, 0.3) * do.double()).sum().backward()
    for leaf, r in zip(leaves, refs):
        assert leaf.grad is not None and r.grad is not None
        torch.testing.assert_close(leaf.grad.double(), r.grad, rtol=RTOL, atol=ATOL)


def test_learned_alibi_slopes_get_gradients() -> None:
    q, k, v = make_qkv(1, 20, 2, 16, seed=41)
    slopes = alibi_slopes(2).requires_grad_(True)
    ref_slopes = alibi_slopes(2).double().requires_grad_(True)
    q.requires_grad_(True)
    ref_q = q.detach().double().requires_grad_(True)
    do = torch.randn(1, 20, 2, 16, generator=torch.Generator().manual_seed(42))
    (triton_attention(q, k, v, alibi_slopes=slopes) * do).sum().backward()
    ref = naive_attention(ref_q, k, v, True, 0, 0, 0, ref_slopes, 0.25)
    (ref * do.double()).sum().backward()
    assert slopes.grad is not None and ref_slopes.grad is not None
    torch.testing.assert_close(slopes.grad.double(), ref_slopes.grad, rtol=RTOL, atol=ATOL)
    assert q.grad is not None and ref_q.grad is not None
    torch.testing.assert_close(q.grad.double(), ref_q.grad, rtol=RTOL, atol=ATOL)
