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

from archdsl.memory.chunked_segments import run_segments
from archdsl.memory.workspace import Workspace
from archdsl.mixers.ops import batch_of, flip_time
from archdsl.mixers.ssd import DEFAULT_CHUNK, chunked_ssd, segment_length


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
    chunk_size: int = DEFAULT_CHUNK,
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
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Hydra's trick: ``SS_fw(x) + flip(SS_bw(flip x))`` as ONE scan over ``[x ; flip x]``
    stacked on the batch axis, plus ``base`` (``[B, T, H, D]``, consumed: written in place).

    With ``shift`` each direction's output moves one token away from its start (the
    strict triangles of the quasiseparable matrix). ``log_a`` may be per head or per key
    channel. The memories' segment engine (`archdsl.memory.chunked_segments.run_segments`)
    runs both directions in the same segments (`archdsl.mixers.ssd.segment_length`
    tokens): each segment's rows are read straight from the inputs, the backward half
    reversed, and both outputs are added straight into their place in the result, so
    nothing of full size is ever flipped, stacked or copied.
    """
    batch = batch_of(x, *fw, *bw)
    length, heads = x.shape[1], x.shape[2]
    out = x.new_zeros(batch, length, heads, x.shape[-1]) if base is None else base
    if out.shape[0] != batch:
        out = out.expand(batch, *out.shape[1:]).clone()
    if length == 0:
        return out
    lr_fw, lr_bw = fw.lr, bw.lr
    if (lr_fw is None) != (lr_bw is None):  # one direction has lr: give the other ones
        lr_fw = x.new_ones(fw.log_a.shape[:3]) if lr_fw is None else lr_fw
        lr_bw = x.new_ones(bw.log_a.shape[:3]) if lr_bw is None else lr_bw
    fw, bw = fw._replace(lr=lr_fw), bw._replace(lr=lr_bw)
    log_decay = _stack_reversed(fw.log_a, bw.log_a, batch)
    leaves = [t for t in (x, *fw, *bw) if t is not None]
    ws = Workspace(not (torch.is_grad_enabled() and any(t.requires_grad for t in leaves)))
    chunks = min(
        segment_length(2 * batch * heads, chunk_size) // chunk_size, -(-length // chunk_size)
    )
    io = _BothDirections(x, fw, bw, out, shift, chunk_size)
    s0 = x.new_zeros(2 * batch, heads, fw.c.shape[-1], x.shape[-1])
    run_segments(io, log_decay, s0, length, chunk_size, chunks, ws)
    return out


def _stack_reversed(t_fw: Tensor, t_bw: Tensor, batch: int) -> Tensor:
    """``[t_fw ; flip t_bw]`` on the batch axis, each broadcast to ``batch``. Two tensors
    constant in time (stride 0 over T: the Vandermonde mixer's nodes) stay so, which lets
    the scan compute their factors once."""
    length = t_fw.shape[1]
    if length > 1 and t_fw.stride(1) == 0 and t_bw.stride(1) == 0:
        firsts = [t[:, :1].expand(batch, 1, *t.shape[2:]) for t in (t_fw, t_bw)]
        return torch.cat(firsts).expand(2 * batch, length, *t_fw.shape[2:])
    rev = flip_time(t_bw)
    return torch.cat(
        [t_fw.expand(batch, *t_fw.shape[1:]), rev.expand(batch, *rev.shape[1:])], dim=0
    )


class _BothDirections:
    """`SegmentRows` of the stacked batch ``[forward ; reversed]``: segment ``t0:t1`` of
    the reversed sequence is tokens ``T - t1 : T - t0`` of the inputs, backwards. Outputs
    are added into ``out`` (shifted by one token away from each direction's start when
    ``shift``)."""

    def __init__(
        self, x: Tensor, fw: ScanParams, bw: ScanParams, out: Tensor, shift: bool, chunk: int
    ) -> None:
        self.x, self.fw, self.bw, self.out = x, fw, bw, out
        self.offset = 1 if shift else 0
        self.chunk = chunk

    def read(
        self, index: int, t0: int, t1: int, rows: int, ws: Workspace
    ) -> tuple[Tensor, Tensor, Tensor]:
        fw, bw, x = self.fw, self.bw, self.x
        return (
            self._rows("q", fw.c, bw.c, None, None, t0, t1, rows, ws),
            self._rows("k", fw.b, bw.b, fw.lr, bw.lr, t0, t1, rows, ws),
            self._rows("v", x, x, None, None, t0, t1, rows, ws),
        )

    def _rows(
        self,
        name: str,
        t_fw: Tensor,
        t_bw: Tensor,
        lr_fw: Tensor | None,
        lr_bw: Tensor | None,
        t0: int,
        t1: int,
        rows: int,
        ws: Workspace,
    ) -> Tensor:
        """Chunk rows ``[2 B H G, C, d]`` of ``t_fw[t0:t1] * lr_fw`` and the reversed
        ``t_bw * lr_bw`` (lr ``[B, T, H]`` or None), zero-padded to ``rows`` tokens."""
        batch, length = self.out.shape[0], self.out.shape[1]
        heads, d = t_fw.shape[2], t_fw.shape[3]
        size = t1 - t0
        fwd, rev = t_fw[:, t0:t1], t_bw[:, length - t1 : length - t0]
        rates = None
        if lr_fw is not None and lr_bw is not None:
            rates = (lr_fw[:, t0:t1], flip_time(lr_bw[:, length - t1 : length - t0]))
        out = ws.buf(name, (2 * batch, heads, rows, d), t_fw)
        if out is None:
            pieces = [fwd, flip_time(rev)]
            if rates is not None:
                pieces = [p * r.unsqueeze(-1) for p, r in zip(pieces, rates)]
            y = torch.cat([p.expand(batch, *p.shape[1:]) for p in pieces]).transpose(1, 2)
            if rows > size:
                y = torch.cat([y, y.new_zeros(2 * batch, heads, rows - size, d)], dim=2)
            return y.reshape(-1, self.chunk, d)
        if rows > size:
            out[:, :, size:].zero_()
        out_fw, out_bw = out[:batch, :, :size], out[batch:, :, :size]
        sources = (fwd.transpose(1, 2), flip_time(rev).transpose(1, 2))
        for target, source, j in zip((out_fw, out_bw), sources, (0, 1)):
            if rates is None:
                target.copy_(source)
            else:  # the layout copy and the rate in one pass
                torch.mul(source, rates[j].transpose(1, 2).unsqueeze(-1), out=target)
        return out.view(-1, self.chunk, d)

    def write(self, o: Tensor, t0: int, t1: int, ws: Workspace) -> None:
        batch, length = self.out.shape[0], self.out.shape[1]
        fwd, rev = o[:batch, :, : t1 - t0], o[batch:, :, : t1 - t0]
        _add_at(self.out, fwd.transpose(1, 2), t0 + self.offset)
        _add_at(self.out, rev.flip(2).transpose(1, 2), length - t1 - self.offset)


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
