"""The segment engine of the chunked gated linear scan (matrix state; see `chunked_linear`).

The sequence is cut into *segments* of ``G`` chunks of ``C`` tokens, run one after
another (`run_segments`): within a segment everything is batched over its chunks but the
chunk-to-chunk recurrence, a loop of ``G`` multiply-adds of states (`_chunk_starts`).
(It was one ``[G, G]`` matrix product per segment for per-head decays; that costs
``2 G / C`` flops per state entry and token against ``2 / C`` for the loop, and the loop
ran 4-5% faster overall at T = 4096, forward and backward.) A segment's intermediates
stay in cache, and without autograd they are written into buffers that every segment
reuses (`Workspace`).

Where a segment's chunk rows come from and where its outputs go is the caller's
(`SegmentRows`): the memories read ``[B, T, H, d]`` tensors in order
(`archdsl.memory.chunked_linear.gated_linear_matrix`); Hydra's bidirectional mixer reads
the sequence forwards and backwards as one batch and adds both outputs into place
(`archdsl.mixers.semiseparable.scan_both_directions`). Both run the same segments.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from archdsl.memory.decayed_scores import channel_scores, decay_factor, decay_floor
from archdsl.memory.workspace import Workspace


class SegmentRows(Protocol):
    """The inputs and outputs of `run_segments`, one segment of tokens at a time."""

    def read(
        self, index: int, t0: int, t1: int, rows: int, ws: Workspace
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q (scaled or not), k (times lr) and v of tokens ``t0:t1`` (segment ``index``)
        as chunk rows ``[B H G, C, d]``, zero-padded to ``rows = G C`` tokens."""
        ...

    def write(self, o: Tensor, t0: int, t1: int, ws: Workspace) -> None:
        """Take the output ``o [B, H, rows, dv]`` of tokens ``t0:t1`` (rows past
        ``t1 - t0`` are padding); ``o`` may be a workspace buffer reused next segment."""
        ...


def run_segments(
    io: SegmentRows,
    log_alpha: Tensor | None,
    s0: Tensor,
    length: int,
    chunk: int,
    per_segment: int,
    ws: Workspace,
) -> Tensor:
    """Run the gated linear recurrence over ``length`` tokens, ``per_segment`` chunks at a
    time, reading and writing through ``io``. log_alpha ``[B, T, H]`` / ``[B, T, H, dk]``
    / None; s0 ``[B, H, dk, dv]``. Returns the final state ``[B, H, dk, dv]``."""
    bsz, h, dk, dv = s0.shape
    seg_len = per_segment * chunk
    segments = -(-length // seg_len)
    gates = _gates_by_segment(log_alpha, segments, per_segment, chunk, bsz * h)
    state = s0.reshape(bsz * h, dk, dv)
    for i in range(segments):
        t0, t1 = i * seg_len, min((i + 1) * seg_len, length)
        rows = -(-(t1 - t0) // chunk) * chunk
        q, k, v = io.read(i, t0, t1, rows, ws)
        o, state = _matrix_segment(q, k, v, gates[i].first(rows // chunk), state, ws)
        io.write(o.view(bsz, h, rows, dv), t0, t1, ws)
    return state.reshape(bsz, h, dk, dv)


def to_rows(
    x: Tensor, chunk: int, rows: int, factor: Tensor | float | None, out: Tensor | None
) -> Tensor:
    """A segment ``[B, L, H, d]`` (times ``factor``, ``[B, L, H, 1 or d]``) as chunk rows
    ``[B H G, C, d]`` with ``G C = rows >= L`` (zero-padded): ``out`` is ``[B, H, rows, d]``
    or None. The layout change is the copy that the batched matmuls need anyway."""
    b, length, h, d = x.shape
    pad = rows - length
    if out is None:
        y = (x if factor is None else x * factor).transpose(1, 2)
        if pad:
            y = torch.cat([y, y.new_zeros(b, h, pad, d)], dim=2)
        return y.reshape(-1, chunk, d)
    if pad:
        out[:, :, length:].zero_()
    target = out[:, :, :length]
    if factor is None:
        target.copy_(x.transpose(1, 2))
    else:
        scaled = factor.transpose(1, 2) if isinstance(factor, Tensor) else factor
        torch.mul(x.transpose(1, 2), scaled, out=target)
    return out.view(-1, chunk, d)


class _SegmentGates(NamedTuple):
    """Decay factors of the ``G`` chunks of one segment (``BH`` = batch x heads).

    b ``[BH, G, C]`` / ``[BH, G, C, dk]``: the cumulative log decay within each chunk;
    q_in ``exp(b)`` and k_out ``exp(b_C - b)``, ``[BH, G, C, 1 or dk]``; chunk
    ``exp(b_C)``, ``[BH, G, 1 or dk, 1]`` (None without decay: all None). Per key channel,
    only alpha ``[BH, G, C, dk]`` is given, the per-token factors ``exp(log alpha)`` from
    which `channel_scores` forms the rest. k_in ``exp(-b)`` ``[BH, 1, C, dk]``: a
    per-channel decay constant in time, whose scores are direct (`_direct_scores`). Per
    head, in segments whose chunks all decay by at most twice the floor in total, the
    decay matrix factorises around each chunk's midpoint ``m = b_C / 2``
    (`_factored_scores`): rows ``exp(b - m)`` ``[BH, G, C, 1]`` and cols ``exp(m - b)``
    ``[BH, G, 1, C]``.
    """

    b: Tensor | None
    q_in: Tensor | None
    k_out: Tensor | None
    chunk: Tensor | None
    alpha: Tensor | None = None
    k_in: Tensor | None = None
    rows: Tensor | None = None
    cols: Tensor | None = None

    def first(self, g: int) -> _SegmentGates:
        """The first ``g`` chunks, with b / q_in / k_out flattened to ``[BH g, C, ...]``
        (not alpha: a time-invariant one is a stride-0 view, copied once by its user)."""
        sized = next((y for y in (self.chunk, self.alpha) if y is not None), None)
        full = sized is None or g == sized.shape[1]

        def take(y: Tensor | None, flat: bool) -> Tensor | None:
            if y is None:
                return None
            y = y if full else y[:, :g]
            return y.flatten(0, 1) if flat else y

        return _SegmentGates(
            take(self.b, True),
            take(self.q_in, True),
            take(self.k_out, True),
            take(self.chunk, False),
            take(self.alpha, False),
            take(self.k_in, True),
            take(self.rows, True),
            take(self.cols, True),
        )


def _segment_major(
    x: Tensor, segments: int, per_segment: int, chunk: int, fill: float = 0.0
) -> Tensor:
    """``[B, T, H, *rest]`` -> ``[segments, B H, per_segment, C, *rest]``, padded with
    ``fill`` (the neutral value: 0 for a log decay, 1 for a decay factor).

    Only for the small per-token gates: one copy puts every segment's slice in one piece.
    """
    b, t, h = x.shape[:3]
    rest = tuple(x.shape[3:])
    pad = segments * per_segment * chunk - t
    if pad:
        x = torch.cat([x, x.new_full((b, pad, h, *rest), fill)], dim=1)
    x = x.reshape(b, segments, per_segment, chunk, h, *rest)
    x = x.permute(1, 0, 4, 2, 3, *range(5, 5 + len(rest)))
    return x.reshape(segments, b * h, per_segment, chunk, *rest)


def _gates_by_segment(
    log_alpha: Tensor | None, segments: int, per_segment: int, chunk: int, bh: int
) -> list[_SegmentGates]:
    """The decay factors of every segment (``bh`` = batch x heads), computed for the whole
    sequence at once."""
    if log_alpha is None:
        return [_SegmentGates(None, None, None, None)] * segments
    if log_alpha.dim() == 4:
        invariant = _invariant_channel_gates(log_alpha, per_segment, chunk, bh)
        if invariant is None:
            alpha = _segment_major(_per_token_factors(log_alpha), segments, per_segment, chunk, 1.0)
            return [_SegmentGates(None, None, None, None, a) for a in alpha]
        gates = [invariant] * segments
        if log_alpha.shape[1] % chunk:  # a partial last chunk: no decay past its end
            start = (segments - 1) * per_segment * chunk
            tail = _per_token_factors(log_alpha[:, start:])
            alpha = _segment_major(tail, 1, per_segment, chunk, 1.0)[0]
            gates[-1] = _SegmentGates(None, None, None, None, alpha)
        return gates
    b = _segment_major(log_alpha, segments, per_segment, chunk).cumsum(dim=3)
    bk = b.unsqueeze(-1)  # [segments, BH, G, C, 1]
    b_last = bk[..., -1:, :]
    q_in, k_out = decay_factor(bk), decay_factor(b_last - bk)
    chunk_decay = decay_factor(b_last).transpose(-1, -2)
    factored = _factored_segments(b[..., -1])
    rows = cols = None
    if any(factored):
        middle = b_last / 2
        rows, cols = torch.exp(bk - middle), torch.exp(middle - bk).transpose(-1, -2)
    return [
        _SegmentGates(b[i], q_in[i], k_out[i], chunk_decay[i])._replace(
            rows=rows[i] if rows is not None and factored[i] else None,
            cols=cols[i] if cols is not None and factored[i] else None,
        )
        for i in range(segments)
    ]


def _factored_segments(chunk_log_decay: Tensor) -> list[bool]:
    """For each segment (``chunk_log_decay [segments, BH, G]``, the chunks' totals),
    whether all its chunks decay by at most twice `decay_floor` in total. Then with
    ``m = b_C / 2``, both ``b_t - m`` and ``m - b_s`` lie in ``[floor, -floor]``, the
    factors ``exp(b_t - m)``, ``exp(m - b_s)`` neither overflow nor leave the normal
    range, and their products, the decays ``exp(b_t - b_s) >= exp(2 floor)`` (float32:
    6e-22), stay normal too: the scores can be `_factored_scores`. One check per call (a
    host sync on a GPU)."""
    with torch.no_grad():
        lowest = chunk_log_decay.flatten(1).amin(dim=1)
        return (lowest >= 2 * decay_floor(chunk_log_decay.dtype)).tolist()


def _invariant_channel_gates(
    log_alpha: Tensor, per_segment: int, chunk: int, bh: int
) -> _SegmentGates | None:
    """The gates of a per-channel decay constant in time (``log_alpha [B, T, H, dk]``
    expanded over T, stride 0: the Vandermonde mixer's nodes), or None for any other.

    Every chunk then has the same factors, computed once for one chunk and broadcast
    (``[BH, 1, C, dk]``): q_in ``exp(b)``, k_out ``exp(b_C - b)``, k_in ``exp(-b)`` (the
    scores are always direct here), chunk ``exp(b_C)``, with ``b_t = (t + 1) log alpha``.
    (Not for a partial last chunk, whose state must not decay past the sequence end: the
    caller gives that segment per-token factors.) None too when a chunk decays below the
    floor in total: the per-token factors and `channel_scores`'s halving handle that case.
    """
    if log_alpha.shape[1] < 2 or log_alpha.stride(1) != 0:
        return None
    steps = torch.arange(1, chunk + 1, device=log_alpha.device, dtype=log_alpha.dtype)
    one = log_alpha[:, 0].reshape(bh, 1, 1, -1)  # [BH, 1, 1, dk]
    b = steps.view(1, 1, chunk, 1) * one  # [BH, 1, C, dk]
    total = b[:, :, -1:]
    with torch.no_grad():
        if bool(total.min() < decay_floor(b.dtype)):
            return None
    chunk_decay = total.exp().transpose(-1, -2).expand(bh, per_segment, -1, 1)
    return _SegmentGates(None, b.exp(), (total - b).exp(), chunk_decay, None, torch.exp(-b))


def _per_token_factors(log_alpha: Tensor) -> Tensor:
    """`decay_factor` of ``log_alpha [B, T, H, dk]``, once per token; a decay constant in
    time (expanded over T, stride 0: the Vandermonde mixer's nodes) is exponentiated once."""
    if log_alpha.shape[1] > 1 and log_alpha.stride(1) == 0:
        return decay_factor(log_alpha[:, :1]).expand_as(log_alpha)
    return decay_factor(log_alpha)


def _intra_scores(q: Tensor, k: Tensor, b: Tensor | None, ws: Workspace) -> Tensor:
    """`decayed_scores` (inclusive) of chunk rows ``[S, C, d]``, b ``[S, C]`` (per head) or
    None: ``(q k^T) * exp(clamp(b_t - b_s, floor, 0))``, then the upper triangle zeroed.

    The clamp at 0 only touches ``s > t`` (``b`` does not increase), so every exponential
    stays of a non-positive number and none is of ``-inf`` (slow on CPU).
    """
    s, c = q.shape[:2]
    scores = torch.bmm(q, k.transpose(1, 2), out=ws.buf("scores", (s, c, c), q))
    if b is not None:
        decay = torch.sub(b.unsqueeze(-1), b.unsqueeze(-2), out=ws.buf("decay", (s, c, c), q))
        decay = torch.clamp(decay, min=decay_floor(b.dtype), max=0.0, out=ws.same(decay))
        decay = torch.exp(decay, out=ws.same(decay))
        scores = torch.mul(scores, decay, out=ws.same(scores))
    return torch.tril(scores, out=ws.same(scores))


def _factored_scores(q: Tensor, k: Tensor, rows: Tensor, cols: Tensor, ws: Workspace) -> Tensor:
    """The scores of `_intra_scores` with the decay matrix as an outer product (see
    `_factored_segments`): ``tril((q k^T) * exp(b_t - m) * exp(m - b_s))``, rows
    ``[S, C, 1]``, cols ``[S, 1, C]``. Equal up to rounding (decays below the floor are
    kept rather than floored, far below the precision of the sums they enter), and no
    exponential per score."""
    s, c = q.shape[:2]
    scores = torch.bmm(q, k.transpose(1, 2), out=ws.buf("scores", (s, c, c), q))
    scores = torch.mul(scores, rows, out=ws.same(scores))
    scores = torch.mul(scores, cols, out=ws.same(scores))
    return torch.tril(scores, out=ws.same(scores))


def _direct_scores(q_in: Tensor, k: Tensor, k_in: Tensor, bh: int, ws: Workspace) -> Tensor:
    """The scores of `_intra_scores` as one product for a per-channel decay constant in
    time whose chunks stay above the floor (`_invariant_channel_gates`):
    ``tril((q exp(b)) (k exp(-b))^T)``, ``exp(b_t) exp(-b_s) = exp(b_t - b_s)`` up to
    rounding. ``q_in = q exp(b)``, ``k_in = exp(-b)`` ``[BH, 1, C, dk]``. No decay
    tensor and no exponential per score."""
    s, c, dk = k.shape
    k_scaled = _scaled(k, k_in, bh, ws.buf("k_in", (s, c, dk), k))
    scores = torch.bmm(q_in, k_scaled.transpose(1, 2), out=ws.buf("scores", (s, c, c), q_in))
    return torch.tril(scores, out=ws.same(scores))


def _scaled(x: Tensor, factor: Tensor, bh: int, out: Tensor | None) -> Tensor:
    """``x * factor`` for chunk rows ``x [BH G, C, d]`` and per-token factors of every
    chunk (``[BH G, C, 1 or d]``) or of one chunk shared by all (``[BH, 1, C, d]``)."""
    s, c, d = x.shape
    grid = (bh, s // bh, c, d)
    y = torch.mul(
        x.view(grid),
        factor.reshape(bh, -1, c, factor.shape[-1]),
        out=None if out is None else out.view(grid),
    )
    return y.view(s, c, d)


def _chunk_starts(
    state: Tensor, writes: Tensor, chunk_decay: Tensor | None, ws: Workspace
) -> tuple[Tensor, Tensor]:
    """``S_{n+1} = a_n S_n + U_n`` over the chunks of a segment, one chunk at a time.

    state ``[BH, dk, dv]``; writes U ``[BH, G, dk, dv]``; chunk_decay a ``[BH, G, 1 or dk,
    1]`` or None (no decay). Returns the start states ``[BH, G, dk, dv]`` (in a workspace
    buffer when enabled) and the state after the segment. (``unbind``, not indexing: the
    backward of G index operations would materialise G full-size zero gradients.)
    """
    bh, n, dk, dv = writes.shape
    starts = ws.buf("starts", (bh, n, dk, dv), writes)
    targets: list[Tensor | None] = [None] * n
    if starts is not None:
        targets = list(starts.unbind(1))
        state = starts[:, 0].copy_(state)
    decays = [None] * n if chunk_decay is None else chunk_decay.unbind(1)
    states = [state]
    for j, (u_j, a_j) in enumerate(zip(writes.unbind(1), decays)):
        out = targets[j + 1] if j + 1 < n else None
        prev = states[-1]
        states.append(
            torch.add(u_j, prev, out=out) if a_j is None else torch.addcmul(u_j, prev, a_j, out=out)
        )
    return (torch.stack(states[:-1], dim=1) if starts is None else starts), states[-1]


def _matrix_segment(
    q: Tensor, k: Tensor, v: Tensor, gates: _SegmentGates, state: Tensor, ws: Workspace
) -> tuple[Tensor, Tensor]:
    """One segment of chunk rows ``[BH G, C, d]`` (q scaled, k times lr), state
    ``[BH, dk, dv]``. Returns ``o [BH G, C, dv]`` and the state after the segment."""
    s, c, dk = q.shape
    bh, dv = state.shape[0], v.shape[-1]
    q_factor, k_factor = gates.q_in, gates.k_out
    if gates.alpha is not None:  # per key channel: scores and factors in one recursion
        per_channel = channel_scores(q, k, gates.alpha, ws)
        scores, q_factor, k_factor = per_channel.scores, per_channel.q_in, per_channel.k_out
        gates = gates._replace(chunk=per_channel.chunk.view(bh, -1, dk, 1))
    q_in, k_out = q, k
    if q_factor is not None and k_factor is not None:
        q_in = _scaled(q, q_factor, bh, ws.buf("q_in", (s, c, dk), q))
        k_out = _scaled(k, k_factor, bh, ws.buf("k_out", (s, c, dk), k))
    if gates.alpha is None:  # without exponentials where the decays allow, else exp(b_t - b_s)
        if gates.k_in is not None:
            scores = _direct_scores(q_in, k, gates.k_in, bh, ws)
        elif gates.rows is not None and gates.cols is not None:
            scores = _factored_scores(q, k, gates.rows, gates.cols, ws)
        else:
            scores = _intra_scores(q, k, gates.b, ws)
    writes = torch.bmm(k_out.transpose(1, 2), v, out=ws.buf("writes", (s, dk, dv), v))
    starts, state = _chunk_starts(state, writes.view(bh, -1, dk, dv), gates.chunk, ws)
    o = torch.bmm(q_in, starts.view(s, dk, dv), out=ws.buf("o", (s, c, dv), v))
    return torch.baddbmm(o, scores, v, out=ws.same(o)), state
