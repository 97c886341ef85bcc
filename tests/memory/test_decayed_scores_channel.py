"""`channel_scores`: per-channel decayed scores from per-token decay factors.

Checked against the definition built explicitly from the full ``[C, C, d]`` decay tensor
(float64), with the workspace (in-place, no autograd) and without (autograd), including
gradients, and at strong decays (finite, floored factors). Both forms are checked: the
direct matmul (taken when no chunk decays below the floor) and the recursive halving
(``path = "halving"`` forces it).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from archdsl.memory import decayed_scores
from archdsl.memory.decayed_scores import channel_scores, decay_floor
from archdsl.memory.workspace import Workspace

F64 = torch.float64
S, C, D = 3, 16, 5


def explicit(x: Tensor, y: Tensor, log_alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, exp(b_t) and exp(b_C - b_t) straight from the definition."""
    b = log_alpha.cumsum(1)  # [S, C, d]
    diff = b.unsqueeze(2) - b.unsqueeze(1)  # [S, t, s, d] = b_t - b_s
    keep = torch.ones(C, C, dtype=torch.bool).tril()
    decay = torch.where(keep[None, :, :, None], diff, torch.full_like(diff, -math.inf)).exp()
    scores = torch.einsum("std,sud,stud->stu", x, y, decay)
    return scores, b.exp(), (b[:, -1:] - b).exp()


def inputs(strength: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(S, C, D, generator=gen, dtype=F64)
    y = torch.randn(S, C, D, generator=gen, dtype=F64)
    log_alpha = -torch.rand(S, C, D, generator=gen, dtype=F64) * strength
    return x, y, log_alpha


def scores_by(path: str, x: Tensor, y: Tensor, alpha: Tensor, ws: Workspace) -> Any:
    if path == "halving":
        return decayed_scores.halving_channel_scores(x, y, alpha, ws)
    return channel_scores(x, y, alpha, ws)


@pytest.mark.parametrize("path", ["auto", "halving"])
@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("strength", [0.05, 1.0, 8.0])
def test_matches_definition(path: str, in_place: bool, strength: float) -> None:
    x, y, log_alpha = inputs(strength, seed=1)
    got = scores_by(path, x, y, log_alpha.exp(), Workspace(in_place))
    scores, q_in, k_out = explicit(x, y, log_alpha)
    torch.testing.assert_close(got.scores, scores)
    torch.testing.assert_close(got.q_in, q_in)
    torch.testing.assert_close(got.k_out, k_out)
    torch.testing.assert_close(got.chunk, q_in[:, -1])


def test_alpha_may_be_a_broadcast_view() -> None:
    x, y, log_alpha = inputs(0.5, seed=2)
    constant = log_alpha[:1, :1].expand(S, C, D)  # time-invariant, stride 0
    got = channel_scores(x, y, constant.exp(), Workspace(True))
    torch.testing.assert_close(got.scores, explicit(x, y, constant)[0])


@pytest.mark.parametrize("path", ["auto", "halving"])
def test_gradients_match_definition(path: str) -> None:
    x, y, log_alpha = (t.requires_grad_() for t in inputs(1.0, seed=3))
    w = torch.randn(S, C, C, dtype=F64)
    got = scores_by(path, x, y, log_alpha.exp(), Workspace(False))
    loss = (got.scores * w).sum() + got.q_in.sum() + (got.k_out**2).sum()
    ref_scores, ref_q, ref_k = explicit(x, y, log_alpha)
    ref = (ref_scores * w).sum() + ref_q.sum() + (ref_k**2).sum()
    for g, r in zip(
        torch.autograd.grad(loss, [x, y, log_alpha]), torch.autograd.grad(ref, [x, y, log_alpha])
    ):
        torch.testing.assert_close(g, r)


def test_strong_decays_are_floored_and_finite() -> None:
    x, y, log_alpha = inputs(150.0, seed=4)
    x, y, log_alpha = x.float(), y.float(), (log_alpha - 50.0).float()  # every log decay < -50
    floor = math.exp(decay_floor(torch.float32))
    alpha = log_alpha.clamp(min=decay_floor(torch.float32)).exp()
    got = channel_scores(x, y, alpha, Workspace(True))
    for t in got:
        assert torch.isfinite(t).all()
    for factor in (got.q_in, got.k_out, got.chunk):
        assert factor.min() >= floor * (1 - 1e-6) and factor.max() <= 1.0
    # at such decays only the diagonal (and the floor's negligible rest) survives
    diagonal = (x * y).sum(-1)
    torch.testing.assert_close(got.scores.diagonal(dim1=1, dim2=2), diagonal)
    off = got.scores - torch.diag_embed(diagonal)
    assert off.abs().max() < 1e-6 * diagonal.abs().max()


def test_direct_form_is_taken_exactly_when_no_chunk_total_is_below_the_floor() -> None:
    """Float32, one chunk total just above / just below the floor (the rest weak)."""
    x, y, log_alpha = (t.float() for t in inputs(0.01, seed=5))
    floor = decay_floor(torch.float32)
    calls: list[str] = []
    direct = decayed_scores.direct_channel_scores
    halving = decayed_scores.halving_channel_scores

    def spy(name: str, fn: Any) -> Any:
        return lambda *a: calls.append(name) or fn(*a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decayed_scores, "direct_channel_scores", spy("direct", direct))
        mp.setattr(decayed_scores, "halving_channel_scores", spy("halving", halving))
        for total in (0.9 * floor, 1.1 * floor):
            strong = log_alpha.clone()
            strong[1, :, 2] = total / C  # chunk 1, channel 2 sums to `total`
            channel_scores(x, y, strong.exp(), Workspace(True))
    assert calls == ["direct", "halving"]


def test_non_power_of_two_chunk_is_refused() -> None:
    x = torch.zeros(1, 12, 2)
    with pytest.raises(ValueError, match="power-of-two"):
        channel_scores(x, x, torch.ones_like(x), Workspace(True))
