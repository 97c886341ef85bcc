"""The segment engine's two forms of per-head intra-chunk decay matrices.

Where every chunk of a segment decays by at most twice the floor in total, the decay
matrix is the outer product of ``exp(b_t - m)`` and ``exp(m - b_s)`` around each chunk's
midpoint; elsewhere it is ``exp(b_t - b_s)`` entry by entry. Both are compared with the
explicit semiseparable matrix (float32, where twice the floor is -48.8 per chunk), in one
call whose segments take different forms, with and without autograd.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from archdsl.memory import chunked_segments
from archdsl.memory.decayed_scores import decay_floor
from archdsl.mixers.semiseparable import ScanParams, lower_semiseparable
from archdsl.mixers.ssd import chunked_ssd

B, H, N, P, CHUNK = 1, 4, 8, 4, 8
SEGMENT = chunked_segments  # the module whose choice is checked


def inputs(length: int, strong_from: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weak decays (chunk totals about -1), strong ones (about -60 per chunk of 8) from
    token ``strong_from`` on."""
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(B, length, H, N, generator=gen) / 3
    b = torch.randn(B, length, H, N, generator=gen) / 3
    x = torch.randn(B, length, H, P, generator=gen)
    log_a = -torch.rand(B, length, H, generator=gen) * 0.25
    if strong_from is not None:
        log_a[:, strong_from:] = -7.0 - torch.rand(B, length - strong_from, H, generator=gen)
    return c, b, x, log_a


def oracle(c: Tensor, b: Tensor, x: Tensor, log_a: Tensor) -> Tensor:
    """``M @ x`` with M built entry by entry in float64."""
    m = lower_semiseparable(ScanParams(c.double(), b.double(), log_a.double(), None), strict=False)
    return torch.einsum("bhij,bjhd->bihd", m, x.double())


def forms_taken(log_a: Tensor, length: int) -> list[bool]:
    """Which segments the engine runs in the factored form (by its own rule)."""
    seen: list[list[bool]] = []
    original = SEGMENT._factored_segments

    def spy(totals: Tensor) -> list[bool]:
        seen.append(original(totals))
        return seen[-1]

    SEGMENT._factored_segments = spy  # type: ignore[assignment]
    try:
        c, b, x, _ = inputs(length, None)
        chunked_ssd(c, b, x, log_decay=log_a, chunk_size=CHUNK)
    finally:
        SEGMENT._factored_segments = original  # type: ignore[assignment]
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("strong_from", [None, 1400, 0])
def test_both_forms_match_the_matrix(grad: bool, strong_from: int | None) -> None:
    length = 1501  # not a multiple of the chunk; three segments of 512 at B H = 4
    c, b, x, log_a = inputs(length, strong_from)
    leaves = [t.requires_grad_(grad) for t in (c, b, x, log_a)]
    got = chunked_ssd(c, b, x, log_decay=log_a, chunk_size=CHUNK)[0]
    want = oracle(c, b, x, log_a)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    if grad:
        weight = torch.randn_like(want)
        g_got = torch.autograd.grad((got.double() * weight).sum(), leaves)
        g_want = torch.autograd.grad((want * weight).sum(), leaves)
        for a, e in zip(g_got, g_want):
            torch.testing.assert_close(a.double(), e.double(), rtol=1e-3, atol=1e-3)


def test_the_call_mixes_forms_segment_by_segment() -> None:
    """The parametrisation above really takes both forms, in one call."""
    length = 1501
    assert 2 * decay_floor(torch.float32) > -56.0  # a strong chunk of 8 (about -60) is below
    weak = forms_taken(inputs(length, None)[3], length)
    mixed = forms_taken(inputs(length, 1400)[3], length)
    strong = forms_taken(inputs(length, 0)[3], length)
    assert all(weak) and len(weak) > 2
    assert mixed[0] and not mixed[-1]
    assert not any(strong)
