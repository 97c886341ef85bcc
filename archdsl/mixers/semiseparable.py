"""Semiseparable matrix mixer (Mamba2 / SSD, scalar decay per head).

Parameters (``[B, T, H, ...]``, a batch dim of 1 for fixed, sequence-independent ones):

- ``c``, ``b``: ``[B, T, H, N]`` (SSM ``C`` and ``B``; N the state size),
- ``log_a``: ``[B, T, H]``, ``log a_t <= 0`` (Mamba2: ``A * dt_t``),
- ``lr``: ``[B, T, H]`` or None (Mamba2: ``dt_t`` scaling the input), None means 1.

Causal (lower triangle, diagonal included)::

    m_ij = c_i . b_j * lr_j * exp(log_a_{j+1} + ... + log_a_i)          i >= j

Bidirectional: the sum of that lower matrix and the reversed scan's upper matrix, with
backward parameters ``c_bw, b_bw, log_a_bw, lr_bw`` (each defaults to its forward one)::

    m_ij += c_bw_i . b_bw_j * lr_bw_j * exp(log_a_bw_i + ... + log_a_bw_{j-1})    i <= j

i.e. ``SS_fw(x) + flip(SS_bw(flip(x)))``, computed as ONE chunked scan over the batch
concatenation ``[x ; flip(x)]`` (the diagonal gets both terms), segment by segment
(`scan_both_directions`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from archdsl.mixers.ops import batch_of, flip_time
from archdsl.mixers.ssd import chunked_ssd, segment_length


class ScanParams(NamedTuple):
    """One direction's semiseparable parameters (see the module docstring)."""

    c: Tensor
    b: Tensor
    log_a: Tensor
    lr: Tensor | None


def semiseparable_mix(
    x: Tensor,
    *,
    c: Tensor,
    b: Tensor,
    log_a: Tensor,
    lr: Tensor | None = None,
    causal: bool = True,
    c_bw: Tensor | None = None,
    b_bw: Tensor | None = None,
    log_a_bw: Tensor | None = None,
    lr_bw: Tensor | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """Fast path: ``Y = M X`` for ``x [B, T, H, D]`` by the chunked SSD scan."""
    fw = ScanParams(c, b, log_a, lr)
    if causal:
        return chunked_ssd(c, b, x, log_decay=log_a, lr=lr, chunk_size=chunk_size)[0]
    bw = backward_params(fw, c_bw, b_bw, log_a_bw, lr_bw)
    return scan_both_directions(x, fw, bw, shift=False, chunk_size=chunk_size)


def backward_params(
    fw: ScanParams,
    c_bw: Tensor | None,
    b_bw: Tensor | None,
    log_a_bw: Tensor | None,
    lr_bw: Tensor | None,
) -> ScanParams:
    """The backward direction's parameters, each defaulting to the forward one."""
    return ScanParams(
        fw.c if c_bw is None else c_bw,
        fw.b if b_bw is None else b_bw,
        fw.log_a if log_a_bw is None else log_a_bw,
        fw.lr if lr_bw is None else lr_bw,
    )


def scan_both_directions(
    x: Tensor,
    fw: ScanParams,
    bw: ScanParams,
    *,
    shift: bool,
    base: Tensor | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """Hydra's trick: ``SS_fw(x) + flip(SS_bw(flip x))`` as ONE scan over ``[x ; flip x]``
    stacked on the batch axis, plus ``base`` (``[B, T, H, D]``, consumed: written in place).

    With ``shift`` each direction's output moves one token away from its start (the
    strict triangles of the quasiseparable matrix). ``log_a`` may be per head or per key
    channel. The scan runs segment by segment (`archdsl.mixers.ssd.segment_length`), the
    forward and the reversed sequence in the same call, so that only segment-sized pieces
    are ever flipped and stacked, and the outputs go straight to their place in the result.
    """
    batch = batch_of(x, *fw, *bw)
    length, heads = x.shape[1], x.shape[2]
    lr_fw, lr_bw = fw.lr, bw.lr
    if (lr_fw is None) != (lr_bw is None):  # one direction has lr: give the other ones
        lr_fw = torch.ones_like(fw.log_a) if lr_fw is None else lr_fw
        lr_bw = torch.ones_like(bw.log_a) if lr_bw is None else lr_bw
    pairs = [(x, x), (fw.c, bw.c), (fw.b, bw.b), (fw.log_a, bw.log_a), (lr_fw, lr_bw)]
    out = x.new_zeros(batch, length, heads, x.shape[-1]) if base is None else base
    if out.shape[0] != batch:
        out = out.expand(batch, *out.shape[1:]).clone()
    offset = 1 if shift else 0
    segment = segment_length(2 * batch * heads, chunk_size)
    state = None
    for t0 in range(0, length, segment):
        t1 = min(t0 + segment, length)
        xx, cc, bb, aa, rr = (_stack_segment(f, b, batch, t0, t1) for f, b in pairs)
        assert xx is not None and cc is not None and bb is not None and aa is not None
        y, state = chunked_ssd(
            cc,
            bb,
            xx,
            log_decay=aa,
            lr=rr,
            initial_state=state,
            output_final_state=t1 < length,
            chunk_size=chunk_size,
        )
        _add_at(out, y[:batch], t0 + offset)
        _add_at(out, flip_time(y[batch:]), length - t1 - offset)
    return out


def _stack_segment(
    t_fw: Tensor | None, t_bw: Tensor | None, batch: int, t0: int, t1: int
) -> Tensor | None:
    """``[t_fw[t0:t1] ; reversed t_bw, its steps t0:t1]`` on the batch axis."""
    if t_fw is None or t_bw is None:
        return None
    length = t_bw.shape[1]
    fwd = t_fw[:, t0:t1].expand(batch, t1 - t0, *t_fw.shape[2:])
    rev = flip_time(t_bw[:, length - t1 : length - t0]).expand(batch, t1 - t0, *t_bw.shape[2:])
    return torch.cat([fwd, rev], dim=0)


def _add_at(out: Tensor, y: Tensor, start: int) -> None:
    """``out[:, start + i] += y[:, i]`` where ``0 <= start + i < T`` (in place)."""
    lo, hi = max(start, 0), min(start + y.shape[1], out.shape[1])
    if lo < hi:
        out[:, lo:hi] += y[:, lo - start : hi - start]


def semiseparable_materialize(
    length: int,
    *,
    c: Tensor,
    b: Tensor,
    log_a: Tensor,
    lr: Tensor | None = None,
    causal: bool = True,
    c_bw: Tensor | None = None,
    b_bw: Tensor | None = None,
    log_a_bw: Tensor | None = None,
    lr_bw: Tensor | None = None,
) -> Tensor:
    """The explicit ``[B, H, T, T]`` matrix of the module docstring (test oracle)."""
    fw = ScanParams(c, b, log_a, lr)
    m = lower_semiseparable(fw, strict=False)
    if not causal:
        bw = backward_params(fw, c_bw, b_bw, log_a_bw, lr_bw)
        m = m + upper_semiseparable(bw, strict=False)
    assert m.shape[-1] == length
    return m


def lower_semiseparable(p: ScanParams, *, strict: bool) -> Tensor:
    """``c_i . b_j lr_j exp(sum_{s=j+1..i} log_a_s)`` on ``i >= j`` (``i > j`` if strict)."""
    length = p.b.shape[1]
    cs = p.log_a.cumsum(dim=1).transpose(1, 2)  # [B, H, T]
    expo = cs.unsqueeze(-1) - cs.unsqueeze(-2)
    keep = torch.ones(length, length, dtype=torch.bool, device=cs.device).tril(-int(strict))
    decay = torch.where(keep, expo, torch.full_like(expo, float("-inf"))).exp()
    cb = torch.einsum("bihn,bjhn->bhij", p.c, p.b)
    lr = 1.0 if p.lr is None else p.lr.transpose(1, 2).unsqueeze(-2)
    return cb * decay * lr


def upper_semiseparable(p: ScanParams, *, strict: bool) -> Tensor:
    """``c_i . b_j lr_j exp(sum_{s=i..j-1} log_a_s)`` on ``i <= j`` (``i < j`` if strict)."""
    length = p.b.shape[1]
    excl = (p.log_a.cumsum(dim=1) - p.log_a).transpose(1, 2)  # sum_{s<i}
    expo = excl.unsqueeze(-2) - excl.unsqueeze(-1)  # [.., i, j] = E_j - E_i
    keep = torch.ones(length, length, dtype=torch.bool, device=excl.device).triu(int(strict))
    decay = torch.where(keep, expo, torch.full_like(expo, float("-inf"))).exp()
    cb = torch.einsum("bihn,bjhn->bhij", p.c, p.b)
    lr = 1.0 if p.lr is None else p.lr.transpose(1, 2).unsqueeze(-2)
    return cb * decay * lr
