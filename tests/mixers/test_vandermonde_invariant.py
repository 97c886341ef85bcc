"""The data-dependent Vandermonde mixer's nodes are constant in time: the scan computes
their factors for one chunk and shares them (`_invariant_channel_gates`), unless a chunk
would decay below the floor, where the per-token factors and the halving take over.

Both are compared with the materialised matrix in float32 (floor -24.4 per chunk of 32),
causal and bidirectional, values and gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from archdsl.memory.chunked_segments import _invariant_channel_gates
from archdsl.mixers.ops import apply_matrix
from archdsl.mixers.ssd import chunked_ssd
from archdsl.mixers.vandermonde import vandermonde_data_materialize, vandermonde_data_mix

B, T, H, N, D, CHUNK = 2, 301, 3, 8, 4, 32


def nodes(kind: str) -> Tensor:
    """log z: weak (chunk totals >= -16), strong (some node -1.5: -48 per chunk), or
    mixed (one strong node among weak ones)."""
    gen = torch.Generator().manual_seed(5)
    log_z = -torch.empty(H, N).uniform_(0.01, 0.5, generator=gen)
    if kind == "strong":
        log_z = log_z - 1.0
    elif kind == "mixed":
        log_z[1, 3] = -1.5
    return log_z


def inputs(kind: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(6)
    c = torch.randn(B, T, H, N, generator=gen) / 2
    b = torch.randn(B, T, H, N, generator=gen) / 2
    x = torch.randn(B, T, H, D, generator=gen)
    return c, b, x, nodes(kind)


@pytest.mark.parametrize("kind, shared", [("weak", True), ("strong", False), ("mixed", False)])
def test_which_factors_the_scan_takes(kind: str, shared: bool) -> None:
    log_alpha = nodes(kind).expand(B, T, H, N)
    gates = _invariant_channel_gates(log_alpha, per_segment=4, chunk=CHUNK, bh=B * H)
    assert (gates is not None) == shared


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["weak", "strong", "mixed"])
def test_fast_path_matches_the_matrix(kind: str, causal: bool) -> None:
    leaves = [t.requires_grad_(True) for t in inputs(kind)]
    c, b, x, log_z = leaves
    got = vandermonde_data_mix(x, c=c, b=b, log_z=log_z, causal=causal, chunk_size=CHUNK)
    m = vandermonde_data_materialize(
        T, c=c.double(), b=b.double(), log_z=log_z.double(), causal=causal
    )
    want = apply_matrix(m, x.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    weight = torch.randn_like(want)
    g_got = torch.autograd.grad((got.double() * weight).sum(), leaves)
    g_want = torch.autograd.grad((want * weight).sum(), leaves)
    for name, a, e in zip(["c", "b", "x", "log_z"], g_got, g_want):
        torch.testing.assert_close(
            a.double(), e.double(), rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("length", [64, 301])  # a whole number of chunks, and not
def test_final_state_of_shared_factors_matches_per_token_factors(length: int) -> None:
    """The state after the sequence, through the shared factors (a decay constant in
    time, stride 0) and through per-token ones (the same decay, materialised): a partial
    last chunk must not decay the state past the sequence end."""
    c, b, x, log_z = inputs("weak")
    c, b, x = c[:, :length], b[:, :length], x[:, :length]
    shared = log_z.expand(B, length, H, N)
    per_token = shared.contiguous()
    s0 = torch.randn(B, H, N, D)
    y1, f1 = chunked_ssd(c, b, x, log_decay=shared, initial_state=s0, output_final_state=True)
    y2, f2 = chunked_ssd(c, b, x, log_decay=per_token, initial_state=s0, output_final_state=True)
    assert f1 is not None and f2 is not None
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f1, f2, rtol=1e-4, atol=1e-4)
