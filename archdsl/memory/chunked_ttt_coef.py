"""Per-segment inputs and decay / momentum coefficients of `chunked_ttt`, built for all
mini-batches at once.

The coefficients of a segment depend only on its gates, never on the memory, so they are
computed before the sequential loop over segments: the full mini-batches (length b, the
middle of the sequence) in one batched call with a chunk axis, the possibly partial first
and last segments on their own. Each segment then receives views of q, k, v, the Huber
threshold and its `Coefficients` (`unbind` over the chunk axis, so the backward pass
stacks the per-chunk gradients once instead of adding each into a zero-filled full-length
tensor).

Conventions as in `chunked_ttt`: head-major layout ``[B, H, T, ...]``; gates keep a channel
axis ``c`` (1 per head, dk per key channel); ``Da`` / ``Dm`` are the decay / momentum
products between two positions of a segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def segsum_exp(log_x: Tensor) -> Tensor:
    """``D[..., t, j, c] = prod_{j < m <= t} x_m`` for j <= t, 0 above the diagonal.

    log_x ``[..., n, c]``; built by a masked cumulative sum (no differences of cumulative
    sums, so a zero factor gives exact zeros)."""
    n = log_x.shape[-2]
    rep = log_x.unsqueeze(-3).expand(*log_x.shape[:-2], n, n, log_x.shape[-1])  # [.., t?, m, c]
    rep = rep.transpose(-3, -2)  # [..., m, j, c]: the term x_m for the pair (., j)
    ones = torch.ones(n, n, dtype=torch.bool, device=log_x.device)
    strict = torch.tril(ones, diagonal=-1).unsqueeze(-1)  # m > j
    summed = torch.cumsum(rep.masked_fill(~strict, 0.0), dim=-3)  # [..., t, j, c]
    lower = torch.tril(ones).unsqueeze(-1)
    # in place on the fresh cumsum (its backward does not read it): two fewer large buffers
    return summed.masked_fill_(~lower, float("-inf")).exp_()


@dataclass
class Coefficients:
    """Of one segment of n tokens (leading dims ``[...]``, e.g. ``[B, H]``):

    - ``a`` ``[..., n, c]``: decay product from the segment start to token t;
    - ``C`` ``[..., n, n, c]``: weight of gradient i in the state after token t;
    - with momentum: ``e`` ``[..., n, c]`` (momentum-at-start into the weights),
      ``m_end`` ``[..., n, c]`` and ``pm_end`` ``[..., 1]`` (the segment-end momentum
      ``S_end = pm_end S_s - sum_i m_end[i] g_i``); None without momentum.
    """

    a: Tensor
    C: Tensor
    e: Tensor | None = None
    m_end: Tensor | None = None
    pm_end: Tensor | None = None

    def unbind(self, dim: int) -> list[Coefficients]:
        """One `Coefficients` per index of leading axis ``dim`` (a chunk axis)."""

        def parts(t: Tensor | None, count: int) -> list[Tensor | None]:
            return list(t.unbind(dim)) if t is not None else [None] * count

        count = self.a.shape[dim]
        a, C = self.a.unbind(dim), self.C.unbind(dim)
        e, m_end, pm_end = (parts(t, count) for t in (self.e, self.m_end, self.pm_end))
        return [Coefficients(a[i], C[i], e[i], m_end[i], pm_end[i]) for i in range(count)]


def coefficients(lr: Tensor, log_alpha: Tensor, log_beta: Tensor | None) -> Coefficients:
    """The coefficients of a segment from its gates ``[..., n, c]`` (log_beta ``[..., n, 1]``,
    None without momentum)."""
    d_alpha = segsum_exp(log_alpha)
    a = torch.exp(torch.cumsum(log_alpha, dim=-2))
    if log_beta is None:
        return Coefficients(a=a, C=d_alpha * lr.unsqueeze(-3))
    d_mom = segsum_exp(log_beta)[..., 0]  # [..., j, i]
    pm = torch.exp(torch.cumsum(log_beta, dim=-2))  # [..., j, 1]
    e = torch.einsum("...tjc,...j->...tc", d_alpha, pm[..., 0])
    C = torch.einsum("...tjc,...ji->...tic", d_alpha, d_mom) * lr.unsqueeze(-3)
    m_end = d_mom[..., -1, :].unsqueeze(-1) * lr
    return Coefficients(a=a, C=C, e=e, m_end=m_end, pm_end=pm[..., -1, :])


@dataclass
class SegmentInputs:
    """What one segment reads: q, k ``[B, H, n, dk]``, v ``[B, H, n, dv]``, delta
    ``[B, H, n]``, the log decay of its first token ``[B, H, c]``, its coefficients."""

    q: Tensor
    k: Tensor
    v: Tensor
    delta: Tensor
    log_alpha0: Tensor
    coef: Coefficients


def segment_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    delta: Tensor,
    lr: Tensor,
    log_alpha: Tensor,
    log_beta: Tensor | None,
    segments: list[tuple[int, int]],
    b: int,
) -> list[SegmentInputs]:
    """The inputs of every segment ``[start, stop)`` (all tensors head-major ``[B, H, T, ...]``).

    Segments of length b (they are consecutive: only the first and the last may be
    shorter) are cut from one reshape with a chunk axis and get their coefficients from one
    batched `coefficients` call."""
    full = [i for i, (s, e) in enumerate(segments) if e - s == b]
    out: list[SegmentInputs | None] = [None] * len(segments)
    if full:
        lo, hi = segments[full[0]][0], segments[full[-1]][1]
        count = len(full)

        def chunks(t: Tensor) -> Tensor:
            B, H = t.shape[:2]
            return t[:, :, lo:hi].reshape(B, H, count, b, *t.shape[3:])

        la = chunks(log_alpha)
        coef = coefficients(chunks(lr), la, chunks(log_beta) if log_beta is not None else None)
        parts = [chunks(t).unbind(2) for t in (q, k, v, delta)]
        firsts = la[:, :, :, 0].unbind(2)
        for j, (i, c) in enumerate(zip(full, coef.unbind(2))):
            qi, ki, vi, di = (p[j] for p in parts)
            out[i] = SegmentInputs(qi, ki, vi, di, firsts[j], c)
    for i, (s, e) in enumerate(segments):
        if out[i] is None:
            lb = log_beta[:, :, s:e] if log_beta is not None else None
            coef_i = coefficients(lr[:, :, s:e], log_alpha[:, :, s:e], lb)
            qi, ki, vi, di = (t[:, :, s:e] for t in (q, k, v, delta))
            out[i] = SegmentInputs(qi, ki, vi, di, log_alpha[:, :, s], coef_i)
    return [o for o in out if o is not None]
