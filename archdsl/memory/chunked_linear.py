"""Chunked parallel form of the gated linear memory family (dot bias, gd learner).

Recurrence (matrix structure, state ``W [B, H, dk, dv]``, read after write)::

    W_t = alpha_t W_{t-1} + (lr_t k_t) v_t^T        o_t = (scale q_t) @ W_t

with ``alpha_t = exp(decay_t)`` one number per head (Mamba2, RetNet, Lightning) or one per
key channel (GLA: ``W_t = diag(alpha_t) W_{t-1} + ...``). Vector structure (``dk == dv``,
state ``w [B, H, dk]``): ``w_t = alpha_t w_{t-1} + lr_t k_t v_t``, ``o_t = scale q_t w_t``.

Chunked form. Time is cut into chunks of ``C`` tokens; inside a chunk, with ``b_t`` the
cumulative log decay since the chunk start (inclusive) and ``S`` the state at the chunk
start::

    o_t     = (q_t exp(b_t)) @ S + sum_{s <= t} [sum_d q_td k_sd exp(b_td - b_sd)] v_s
    S_next  = exp(b_C) S + sum_s (k_s exp(b_C - b_s))^T v_s

Matrix memories (`gated_linear_matrix`) run in *segments* of a few chunks (about
``SEGMENT_TOKEN_HEADS`` tokens x heads x batch), one after another: within a segment
everything is batched over its chunks, including the chunk-to-chunk recurrence, which
with one decay per head (or none) is one matrix product over the segment's chunks
(`_SegmentGates.transfer`); per key channel it is a loop over them. A segment's
intermediates stay in cache, and without autograd they are written into buffers that
every segment reuses (`_Workspace`); this, not the arithmetic (about 16x fewer flops than
``M @ x`` at T = 4096), is what decides the speed on CPU. The vector structure is
batched over all chunks at once, its recurrence a loop of elementwise multiply-adds.

Stability (log space). Every exponential is of a *non-positive* number: ``b_t``,
``b_C - b_s`` and ``b_t - b_s`` for ``s <= t`` (the decays are ``<= 0``). The intra-chunk
decay matrix is clamped to ``<= 0`` (or masked to ``-inf``) above the diagonal *before*
``exp`` and zeroed there after, so no ``inf * 0`` appears. With one decay per key channel
the intra-chunk scores cannot be one matmul of ``q exp(b)`` and ``k exp(-b)`` (``exp(-b)``
overflows at strong decays), and the full ``[C, C, dk]`` decay tensor is too big;
`decayed_scores` instead splits the chunk recursively in halves: the block "second half x
first half" of each split factorises exactly around the split point ``r`` (``s <= r < t``)
as ``(q_t exp(b_t - b_r)) . (k_s exp(b_r - b_s))``, both factors ``<= 1``, one matmul per
level, ``log2(C)`` levels. Decays must be finite (``alpha > 0``). Every factor is floored at
``exp(decay_floor(dtype))`` (float32: ~2.5e-11, far below its precision), which keeps the
products of up to three factors that the chunked forms build out of the subnormal range,
where CPU arithmetic is a hundred times slower (`decay_floor`). The chunk-to-chunk weights
of a segment are exponentials of differences of prefix sums, formed in float64 (`_transfer`).

The functions here are also the building blocks of `archdsl.memory.chunked_delta`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.inputs import check_arguments, default_scale
from archdsl.memory.state import MemoryState

# Also the default of the mixers that share chunked_gated_linear (they must agree to be
# bit-identical). On CPU at dk = dv = 64, 32 is 10-15% faster for the gated linear
# memories (forward and backward; the intra-chunk work is O(C) per token, the state
# traffic O(dk dv / C)); changing it means changing the mixers' chunk_size with it.
DEFAULT_CHUNK = 64
# Tokens x heads x batch per segment of the matrix memory (`segment_chunks`): a segment's
# intermediates (a few [C, C] and [dk, dv] blocks per chunk) then stay in the CPU caches.
SEGMENT_TOKEN_HEADS = 2048
# Below this block size the off-diagonal products are formed elementwise: batched matmuls of
# [m, d] x [d, m] with tiny m are dominated by per-matrix overhead on CPU.
_ELEMENTWISE_BELOW = 8


# ---------------------------------------------------------------------------------------
# Shared plumbing (also used by chunked_delta)
# ---------------------------------------------------------------------------------------


def initial_weights(initial_state: MemoryState | Tensor | None) -> Tensor | None:
    """The state tensor of ``initial_state`` (a MemoryState ``(W,)`` or a plain tensor)."""
    if initial_state is None:
        return None
    if isinstance(initial_state, MemoryState):
        if len(initial_state.weights) != 1 or initial_state.extra:
            raise ValueError(
                "initial_state: expected a MemoryState with one weight tensor (W,) and no "
                f"extra, got {len(initial_state.weights)} weights, {len(initial_state.extra)} extra"
            )
        return initial_state.weights[0]
    return initial_state


def head_or_channel(gate: Tensor | None) -> Tensor | None:
    """A gate ``[..., 1 or dk]`` (MemoryInputs form) as ``[...]`` (per head) or unchanged."""
    if gate is None or gate.shape[-1] != 1:
        return gate
    return gate.squeeze(-1)


def to_chunks(x: Tensor, chunk: int) -> Tensor:
    """``[B, T, H, *rest]`` -> ``[B, H, N, C, *rest]`` with ``N = ceil(T / C)``.

    The tail is zero-padded; zeros are neutral everywhere here (a zero key writes nothing,
    a zero log decay keeps the state), so padded tokens leave the final state unchanged.
    """
    b, t, h = x.shape[:3]
    rest = tuple(x.shape[3:])
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, h, *rest)], dim=1)
    # One copy into the [B, H, T] layout here saves the batched matmuls from copying
    # their (otherwise strided) operands again and again.
    return x.transpose(1, 2).contiguous().reshape(b, h, n, chunk, *rest)


def from_chunks(x: Tensor, t: int) -> Tensor:
    """``[B, H, N, C, *rest]`` -> ``[B, T, H, *rest]``, contiguous (drops the padding)."""
    b, h, n, c = x.shape[:4]
    return x.reshape(b, h, n * c, *x.shape[4:])[:, :, :t].transpose(1, 2).contiguous()


def decay_floor(dtype: torch.dtype) -> float:
    """The smallest log decay factor formed: ``0.28 log(tiny)`` (float32: -24.4).

    Products of up to three factors ``>= exp(floor)`` stay normal numbers (the recursive
    halving multiplies two, the delta rule's solve a third); subnormals slow CPU arithmetic
    a hundredfold at strong decays. ``exp(floor)`` is 2.5e-11 in float32 (eps 1.2e-7) and
    3e-87 in float64, far below the precision of the sums a floored factor enters, so the
    floor changes no result beyond rounding. float16, whose eps is above ``exp(floor)``, is
    not floored.
    """
    info = torch.finfo(dtype)
    floor = 0.28 * math.log(info.tiny)
    return floor if floor < math.log(info.eps) else float("-inf")


def decay_factor(log_decay: Tensor) -> Tensor:
    """``exp(log_decay)`` for ``log_decay <= 0``, floored at ``exp(decay_floor)``."""
    return log_decay.clamp(min=decay_floor(log_decay.dtype)).exp()


def causal_mask(c: int, strict: bool, device: torch.device) -> Tensor:
    """Boolean ``[C, C]``: True where ``s <= t`` (``s < t`` when ``strict``)."""
    return torch.ones(c, c, dtype=torch.bool, device=device).tril(-1 if strict else 0)


# ---------------------------------------------------------------------------------------
# Intra-chunk decayed scores
# ---------------------------------------------------------------------------------------


def decayed_scores(x: Tensor, y: Tensor, b: Tensor | None, strict: bool) -> Tensor:
    """``M[t, s] = sum_d x_td y_sd exp(b_td - b_sd)`` for ``s <= t`` (``s < t``), else 0.

    x, y: ``[..., C, d]``; b: cumulative log decay within the chunk, ``[..., C]`` (one per
    head), ``[..., C, d]`` (one per channel) or None (no decay). Returns ``[..., C, C]``.
    """
    mask = causal_mask(x.shape[-2], strict, x.device)
    if b is not None and b.dim() == x.dim():
        return _channel_decayed_scores(x, y, b, strict)
    scores = x @ y.transpose(-1, -2)
    if b is None:
        return scores.masked_fill(~mask, 0.0)
    diff = (b.unsqueeze(-1) - b.unsqueeze(-2)).clamp(min=decay_floor(b.dtype))
    return scores * diff.masked_fill(~mask, float("-inf")).exp()


def _channel_decayed_scores(x: Tensor, y: Tensor, b: Tensor, strict: bool) -> Tensor:
    """`decayed_scores` for per-channel decays, by recursive halving (see module doc).

    Blocks of size ``m`` are merged pairwise into blocks of size ``2m``: the two diagonal
    blocks are kept and the lower-left block is the factorised product around the last
    token of the first half. The chunk length must be a power of two.
    """
    c, d = x.shape[-2], x.shape[-1]
    if c & (c - 1):
        raise ValueError(f"per-channel decay needs a power-of-two chunk size, got {c}")
    lead = x.shape[:-2]
    # blocks of size 1: the diagonal q_t . k_t (inclusive) or nothing (strict)
    blocks = x.new_zeros(*lead, c, 1, 1) if strict else (x * y).sum(-1)[..., None, None]
    m = 1
    while m < c:
        pairs = c // (2 * m)
        xs = x.reshape(*lead, pairs, 2, m, d)
        ys = y.reshape(*lead, pairs, 2, m, d)
        bs = b.reshape(*lead, pairs, 2, m, b.shape[-1])
        b_ref = bs[..., 0, m - 1 :, :]  # the split point r, [..., pairs, 1, d]
        x_late = xs[..., 1, :, :] * decay_factor(bs[..., 1, :, :] - b_ref)
        y_early = ys[..., 0, :, :] * decay_factor(b_ref - bs[..., 0, :, :])
        if m < _ELEMENTWISE_BELOW:
            lower = (x_late.unsqueeze(-2) * y_early.unsqueeze(-3)).sum(-1)
        else:
            lower = x_late @ y_early.transpose(-1, -2)
        diag = blocks.reshape(*lead, pairs, 2, m, m)
        top = torch.cat([diag[..., 0, :, :], torch.zeros_like(lower)], dim=-1)
        bottom = torch.cat([lower, diag[..., 1, :, :]], dim=-1)
        blocks = torch.cat([top, bottom], dim=-2)
        m *= 2
    return blocks.reshape(*lead, c, c)


def decayed_prefix_sum(x: Tensor, b: Tensor) -> Tensor:
    """``w_t = sum_{s <= t} exp(b_t - b_s) x_s`` within each chunk, elementwise in ``d``.

    x: ``[..., C, d]``; b: ``[..., C, d]`` or ``[..., C, 1]`` (broadcast over d). Same
    recursive halving as `_channel_decayed_scores`, but each level adds one summed vector
    per block, so the cost is ``O(C log C d)``.
    """
    c = x.shape[-2]
    if c & (c - 1):
        raise ValueError(f"decayed prefix sums need a power-of-two chunk size, got {c}")
    lead = x.shape[:-2]
    b = b.expand_as(x)
    out = x
    m = 1
    while m < c:
        pairs = c // (2 * m)
        xs = x.reshape(*lead, pairs, 2, m, -1)
        bs = b.reshape(*lead, pairs, 2, m, -1)
        b_ref = bs[..., 0, m - 1 :, :]
        early = (xs[..., 0, :, :] * decay_factor(b_ref - bs[..., 0, :, :])).sum(-2, keepdim=True)
        late = decay_factor(bs[..., 1, :, :] - b_ref) * early
        out = out + torch.cat([torch.zeros_like(late), late], dim=-2).reshape_as(x)
        m *= 2
    return out


# ---------------------------------------------------------------------------------------
# The two structures
# ---------------------------------------------------------------------------------------


def _chunk_start_states(s0: Tensor, chunk_decay: Tensor | None, writes: Tensor) -> list[Tensor]:
    """States at the start of every chunk and after the last: ``S_{n+1} = a_n S_n + U_n``.

    s0: ``[B, H, *state]``; writes U: ``[B, H, N, *state]``; chunk_decay a (already
    exponentiated): None or ``[B, H, N, ...]``, each ``a_n`` broadcastable to a state.
    Returns ``N + 1`` tensors. (``unbind``, not indexing: the backward of N index
    operations would materialise N full-size zero gradients.)
    """
    states = [s0]
    decays = chunk_decay.unbind(2) if chunk_decay is not None else [None] * writes.shape[2]
    for a_n, u_n in zip(decays, writes.unbind(2)):
        kept = states[-1] if a_n is None else states[-1] * a_n
        states.append(kept + u_n)
    return states


class _Workspace:
    """Buffers reused by every segment of one call, or nothing at all under autograd.

    Enabled (no gradient is recorded), each intermediate is written with ``out=`` into a
    buffer allocated once per call and kept in cache from one segment to the next; fresh
    allocations the size of a segment cost page faults on every segment, a large part of
    the runtime on CPU. Disabled (autograd), ``buf`` and ``same`` return None, and the
    same calls allocate their results as usual (``out=None``).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._buffers: dict[str, Tensor] = {}

    def buf(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """The buffer ``name`` of ``shape`` (re-allocated when the shape changes)."""
        if not self.enabled:
            return None
        old = self._buffers.get(name)
        if old is None or old.shape != shape:
            old = self._buffers[name] = like.new_empty(shape)
        return old

    def same(self, x: Tensor) -> Tensor | None:
        """``x`` itself as the ``out=`` of an elementwise op (in place), or None."""
        return x if self.enabled else None


class _SegmentGates(NamedTuple):
    """Decay factors of the ``G`` chunks of one segment (``BH`` = batch x heads).

    b ``[BH, G, C]`` / ``[BH, G, C, dk]``: the cumulative log decay within each chunk;
    q_in ``exp(b)`` and k_out ``exp(b_C - b)``, ``[BH, G, C, 1 or dk]``; chunk
    ``exp(b_C)``, ``[BH, G, 1 or dk, 1]`` (None without decay). With one decay per head
    (or none), the chunk-to-chunk recurrence of the segment is one matrix product
    (`_chunk_starts`): transfer ``[BH, G, G]``, the weight of chunk ``m``'s write in the
    state at the start of chunk ``g``, ``exp(sum_{m < j < g} b_C(j))`` for ``m < g``; carry
    ``[BH, G, 1]``, that of the state entering the segment, ``exp(sum_{j < g} b_C(j))``
    (None: all ones). Per key channel, transfer and carry are None (a loop over chunks).
    """

    b: Tensor | None
    q_in: Tensor | None
    k_out: Tensor | None
    chunk: Tensor | None
    transfer: Tensor | None
    carry: Tensor | None

    def first(self, g: int) -> _SegmentGates:
        """The first ``g`` chunks, with b / q_in / k_out flattened to ``[BH g, C, ...]``."""
        sized = self.transfer if self.chunk is None else self.chunk
        full = sized is None or g == sized.shape[1]

        def take(y: Tensor | None, flat: bool) -> Tensor | None:
            if y is None:
                return None
            y = y if full else y[:, :g]
            return y.flatten(0, 1) if flat else y

        transfer = self.transfer if full or self.transfer is None else self.transfer[:, :g, :g]
        return _SegmentGates(
            take(self.b, True),
            take(self.q_in, True),
            take(self.k_out, True),
            take(self.chunk, False),
            transfer,
            take(self.carry, False),
        )


def _segment_major(x: Tensor, segments: int, per_segment: int, chunk: int) -> Tensor:
    """``[B, T, H, *rest]`` -> ``[segments, B H, per_segment, C, *rest]``, zero-padded.

    Only for the small per-token gates: one copy puts every segment's slice in one piece.
    """
    b, t, h = x.shape[:3]
    rest = tuple(x.shape[3:])
    pad = segments * per_segment * chunk - t
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, h, *rest)], dim=1)
    x = x.reshape(b, segments, per_segment, chunk, h, *rest)
    x = x.permute(1, 0, 4, 2, 3, *range(5, 5 + len(rest)))
    return x.reshape(segments, b * h, per_segment, chunk, *rest)


def _transfer(chunk_log_decay: Tensor) -> tuple[Tensor, Tensor]:
    """``(transfer [..., G, G], carry [..., G, 1])`` of `_SegmentGates` from the chunks'
    total log decays ``[..., G]``.

    The exponents are differences of prefix sums over the segment; those are formed in
    float64 (they are G numbers per head), so that a long strongly decayed prefix does not
    cost the short weakly decayed spans their precision. Each factor is floored like
    every other (`decay_factor`).
    """
    floor = decay_floor(chunk_log_decay.dtype)
    ends = chunk_log_decay.double().cumsum(-1)  # log decay from the segment start to each chunk end
    starts = torch.cat([torch.zeros_like(ends[..., :1]), ends[..., :-1]], dim=-1)
    spans = (starts.unsqueeze(-1) - ends.unsqueeze(-2)).clamp(min=floor, max=0.0)
    transfer = torch.tril(spans.exp(), diagonal=-1)
    carry = starts.clamp(min=floor).exp().unsqueeze(-1)
    return transfer.to(chunk_log_decay.dtype), carry.to(chunk_log_decay.dtype)


def _gates_by_segment(
    log_alpha: Tensor | None, segments: int, per_segment: int, chunk: int, like: Tensor
) -> list[_SegmentGates]:
    """The decay factors of every segment, computed for the whole sequence at once."""
    if log_alpha is None:
        bh = like.shape[0] * like.shape[2]
        ones = like.new_ones(per_segment, per_segment).tril(-1).expand(bh, -1, -1)
        return [_SegmentGates(None, None, None, None, ones, None)] * segments
    b = _segment_major(log_alpha, segments, per_segment, chunk).cumsum(dim=3)
    per_head = b.dim() == 4
    bk = b.unsqueeze(-1) if per_head else b  # [segments, BH, G, C, 1 or dk]
    b_last = bk[..., -1:, :]
    q_in, k_out = decay_factor(bk), decay_factor(b_last - bk)
    chunk_decay = decay_factor(b_last).transpose(-1, -2)
    if not per_head:
        return [_SegmentGates(*parts, None, None) for parts in zip(b, q_in, k_out, chunk_decay)]
    transfer, carry = _transfer(b[..., -1])
    return [_SegmentGates(*parts) for parts in zip(b, q_in, k_out, chunk_decay, transfer, carry)]


def _to_rows(
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


def _intra_scores(q: Tensor, k: Tensor, b: Tensor | None, ws: _Workspace) -> Tensor:
    """`decayed_scores` (inclusive) of chunk rows ``[S, C, d]``, b ``[S, C]`` / ``[S, C, dk]``.

    Per head: ``(q k^T) * exp(clamp(b_t - b_s, floor, 0))``, then the upper triangle
    zeroed. The clamp at 0 only touches ``s > t`` (``b`` does not increase), so every
    exponential stays of a non-positive number and none is of ``-inf`` (slow on CPU).
    """
    if b is not None and b.dim() == q.dim():
        return _channel_decayed_scores(q, k, b, strict=False)
    s, c = q.shape[:2]
    scores = torch.bmm(q, k.transpose(1, 2), out=ws.buf("scores", (s, c, c), q))
    if b is not None:
        decay = torch.sub(b.unsqueeze(-1), b.unsqueeze(-2), out=ws.buf("decay", (s, c, c), q))
        decay = torch.clamp(decay, min=decay_floor(b.dtype), max=0.0, out=ws.same(decay))
        decay = torch.exp(decay, out=ws.same(decay))
        scores = torch.mul(scores, decay, out=ws.same(scores))
    return torch.tril(scores, out=ws.same(scores))


def _chunk_starts(
    state: Tensor, writes: Tensor, gates: _SegmentGates, ws: _Workspace
) -> tuple[Tensor, Tensor]:
    """``S_{n+1} = a_n S_n + U_n`` over the chunks of a segment.

    state ``[BH, dk, dv]``; writes U ``[BH, G, dk, dv]``. Returns the start states
    ``[BH, G, dk, dv]`` and the state after the segment. With a transfer matrix (decay
    per head, or none) the start states are one batched product
    ``carry * S + transfer @ U``; per key channel, a loop over the chunks.
    """
    bh, n, dk, dv = writes.shape
    starts = ws.buf("starts", (bh, n, dk, dv), writes)
    if gates.transfer is None:
        return _chunk_starts_loop(state, writes, gates.chunk, starts)
    flat_in = state.reshape(bh, 1, dk * dv)
    flat_starts = None if starts is None else starts.view(bh, n, dk * dv)
    if gates.carry is None:
        kept = flat_in.expand(bh, n, dk * dv)
    else:
        kept = torch.mul(gates.carry, flat_in, out=flat_starts)
    flat = torch.baddbmm(kept, gates.transfer, writes.view(bh, n, dk * dv), out=flat_starts)
    last = flat[:, -1].view(bh, dk, dv)
    end = ws.buf("end", (bh, dk, dv), writes)
    if gates.chunk is None:
        state = torch.add(writes[:, -1], last, out=end)
    else:
        state = torch.addcmul(writes[:, -1], last, gates.chunk[:, -1], out=end)
    return flat.view(bh, n, dk, dv), state


def _chunk_starts_loop(
    state: Tensor, writes: Tensor, chunk_decay: Tensor | None, starts: Tensor | None
) -> tuple[Tensor, Tensor]:
    """`_chunk_starts` one chunk at a time; ``starts`` the buffer for the start states
    (None: allocated). (``unbind``, not indexing: the backward of G index operations
    would materialise G full-size zero gradients.)"""
    n = writes.shape[1]
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
    q: Tensor, k: Tensor, v: Tensor, gates: _SegmentGates, state: Tensor, ws: _Workspace
) -> tuple[Tensor, Tensor]:
    """One segment of chunk rows ``[BH G, C, d]`` (q scaled, k times lr), state
    ``[BH, dk, dv]``. Returns ``o [BH G, C, dv]`` and the state after the segment."""
    s, c, dk = q.shape
    bh, dv = state.shape[0], v.shape[-1]
    scores = _intra_scores(q, k, gates.b, ws)
    q_in, k_out = q, k
    if gates.q_in is not None and gates.k_out is not None:
        q_in = torch.mul(q, gates.q_in, out=ws.buf("q_in", (s, c, dk), q))
        k_out = torch.mul(k, gates.k_out, out=ws.buf("k_out", (s, c, dk), k))
    writes = torch.bmm(k_out.transpose(1, 2), v, out=ws.buf("writes", (s, dk, dv), v))
    starts, state = _chunk_starts(state, writes.view(bh, -1, dk, dv), gates, ws)
    o = torch.bmm(q_in, starts.view(s, dk, dv), out=ws.buf("o", (s, c, dv), v))
    return torch.baddbmm(o, scores, v, out=ws.same(o)), state


def segment_chunks(batch_heads: int, chunk: int) -> int:
    """Chunks per segment: about ``SEGMENT_TOKEN_HEADS / (B H)`` tokens, at least one chunk."""
    return max(1, SEGMENT_TOKEN_HEADS // max(1, batch_heads * chunk))


def gated_linear_matrix(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor | float,
    log_alpha: Tensor | None,
    s0: Tensor,
    scale: float,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    """Matrix memory, segment by segment. Returns ``(o [B, T, H, dv], final_state)``.

    q ``[B, T, H, dk]`` (unscaled: o is linear in q, so ``scale`` multiplies o instead),
    k ``[B, T, H, dk]``, lr ``[B, T, H, 1 or dk]`` or a float (the write is ``lr k``),
    v ``[B, T, H, dv]``, log_alpha ``[B, T, H]`` / ``[B, T, H, dk]`` / None, s0
    ``[B, H, dk, dv]``. The sequence is cut into segments of ``G`` chunks
    (`segment_chunks`), run one after another: everything within a segment is batched
    and its intermediates stay in cache; without autograd they are written into buffers
    reused by every segment (`_Workspace`).
    """
    bsz, t, h, dk = q.shape
    dv = v.shape[-1]
    if t == 0:
        return q.new_zeros(bsz, 0, h, dv), s0
    per_segment = min(segment_chunks(bsz * h, chunk), -(-t // chunk))
    length = per_segment * chunk
    segments = -(-t // length)
    gates = _gates_by_segment(log_alpha, segments, per_segment, chunk, q)
    leaves = [y for y in (q, k, v, lr, s0, log_alpha) if isinstance(y, Tensor)]
    ws = _Workspace(not (torch.is_grad_enabled() and any(y.requires_grad for y in leaves)))
    out = q.new_empty(bsz, t, h, dv) if ws.enabled else None
    pieces = []
    state = s0.reshape(bsz * h, dk, dv)
    # split, not slicing: the backward of one slice per segment would materialise a
    # full-size zero gradient per segment
    rates = lr.split(length, dim=1) if isinstance(lr, Tensor) else [lr] * segments
    parts = zip(q.split(length, dim=1), k.split(length, dim=1), v.split(length, dim=1), rates)
    for i, (q_i, k_i, v_i, lr_i) in enumerate(parts):
        t0, t1 = i * length, i * length + q_i.shape[1]
        rows = -(-(t1 - t0) // chunk) * chunk
        seg = gates[i].first(rows // chunk)
        rate = None if isinstance(lr_i, float) and lr_i == 1.0 else lr_i
        qc = _to_rows(q_i, chunk, rows, None, ws.buf("q", (bsz, h, rows, dk), q))
        kc = _to_rows(k_i, chunk, rows, rate, ws.buf("k", (bsz, h, rows, dk), k))
        vc = _to_rows(v_i, chunk, rows, None, ws.buf("v", (bsz, h, rows, dv), v))
        o, state = _matrix_segment(qc, kc, vc, seg, state, ws)
        o = o.view(bsz, h, rows, dv)[:, :, : t1 - t0].transpose(1, 2)
        if scale != 1.0:
            o = torch.mul(o, scale, out=None if out is None else out[:, t0:t1])
        elif out is not None:
            out[:, t0:t1].copy_(o)
        pieces.append(o)
    o = torch.cat(pieces, dim=1) if out is None else out
    return o, state.reshape(bsz, h, dk, dv)


def gated_linear_vector_chunks(
    q: Tensor, k: Tensor, v: Tensor, b: Tensor | None, s0: Tensor
) -> tuple[Tensor, Tensor]:
    """Vector (elementwise) memory on chunked inputs ``[B, H, N, C, d]``; s0 ``[B, H, d]``.

    q already scaled, k already multiplied by lr, b the cumulative log decay
    ``[B, H, N, C]`` / ``[B, H, N, C, dk]`` / None (as `to_chunks` lays them out).
    Returns ``(o, final_state)``.
    """
    x = k * v
    if b is None:
        b = x.new_zeros(x.shape[:-1]).unsqueeze(-1)
    elif b.dim() != q.dim():
        b = b.unsqueeze(-1)
    inner = decayed_prefix_sum(x, b)
    chunk_decay = decay_factor(b[..., -1, :])  # [B, H, N, d or 1]
    states = _chunk_start_states(s0, chunk_decay, inner[..., -1, :])
    start = torch.stack(states[:-1], dim=2).unsqueeze(-2)  # [B, H, N, 1, d]
    o = q * (decay_factor(b) * start + inner)
    return o, states[-1]


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def chunked_gated_linear(
    mem: Memory,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    lr: Tensor | float,
    decay: Tensor | None = None,
    momentum: Tensor | float | None = None,
    delta: Tensor | float | None = None,
    scale: float | None = None,
    initial_state: MemoryState | Tensor | None = None,
    output_final_state: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor, MemoryState | None]:
    """Gated linear memory (dot bias, gd learner, batch 1), chunked; see the module doc.

    q, k ``[B, T, H, dk]``; v ``[B, T, H, dv]``; lr ``[B, T, H]``, ``[B, T, H, dk]`` or a
    float (the write is ``lr * k``); decay = log alpha ``<= 0``, ``[B, T, H]`` or
    ``[B, T, H, dk]``, given exactly when the retention is ``decay``. Arguments are checked
    by `archdsl.memory.inputs.check_arguments` and normalised as by ``prepare_inputs``
    (`_normalise`): the scale (argument, else ``features.scale``, else dk^-1/2) and HGRN2's
    tied key (``retention.tie_key``: k = 1 - alpha); momentum must be None and delta is
    ignored. State: matrix ``W [B, H, dk, dv]``, vector ``w [B, H, dk]``
    (``dk == dv``); ``initial_state`` a MemoryState ``(W,)`` or the tensor itself.
    Returns ``o [B, T, H, dv]`` and ``MemoryState((W,))`` when ``output_final_state``.
    ``chunk`` (a power of two for per-channel decays and vector memories) changes only
    speed, never results.

    >>> from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
    >>> mem = Memory(name="la", structure=Structure(kind="matrix"), bias=Bias(kind="dot"),
    ...              retention=Retention(kind="none"),
    ...              learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)))
    >>> q, k, v = torch.ones(1, 3, 1, 4), torch.ones(1, 3, 1, 4), torch.ones(1, 3, 1, 2)
    >>> o, _ = chunked_gated_linear(mem, q, k, v, lr=torch.ones(1, 3, 1), scale=1.0)
    >>> o[0, :, 0, 0].tolist()  # o_t = sum_{s <= t} (q . k_s) v_s
    [4.0, 8.0, 12.0]
    """
    if mem.structure.kind not in ("matrix", "vector"):
        raise ValueError(f"chunked_gated_linear: unsupported structure {mem.structure.kind!r}")
    check_arguments(mem, q, k, v, lr=lr, decay=decay, momentum=momentum, delta=delta)
    k, rate, log_alpha, s = _normalise(mem, q, k, lr, decay, scale)
    bsz, t, h, dk = q.shape
    dv = v.shape[-1]
    s0 = initial_weights(initial_state)
    if mem.structure.kind == "matrix":
        if s0 is None:
            s0 = q.new_zeros(bsz, h, dk, dv)
        o, final = gated_linear_matrix(q, k, v, rate, log_alpha, s0, s, chunk)
        return o, (MemoryState((final,)) if output_final_state else None)
    if s0 is None:
        s0 = q.new_zeros(bsz, h, dk)
    b = None if log_alpha is None else to_chunks(log_alpha, chunk).cumsum(dim=3)
    qc, kc, vc = (to_chunks(y, chunk) for y in (q * s, k * rate, v))
    o, final = gated_linear_vector_chunks(qc, kc, vc, b, s0)
    return from_chunks(o, t), (MemoryState((final,)) if output_final_state else None)


def _normalise(
    mem: Memory, q: Tensor, k: Tensor, lr: Tensor | float, decay: Tensor | None, scale: float | None
) -> tuple[Tensor, Tensor | float, Tensor | None, float]:
    """``(k, lr, log_alpha, scale)`` as `archdsl.memory.inputs.prepare_inputs` normalises
    them (lr ``[B, T, H, 1 or dk]``, log_alpha ``[B, T, H]`` or ``[B, T, H, dk]``), except
    that q is not multiplied by the scale and a float lr stays a float: those full-size
    copies are folded into the output and the layout copy of k instead.
    """
    dk = k.shape[-1]
    if isinstance(lr, Tensor) and lr.dim() == 3:
        lr = lr.unsqueeze(-1)
    elif not isinstance(lr, Tensor):
        lr = float(lr)
    if mem.retention.tie_key:
        if decay is None or decay.dim() != 4 or decay.shape[-1] != dk:
            raise ValueError(f"memory '{mem.name}': tie_key needs a per-channel decay")
        k = 1.0 - torch.exp(decay)
    log_alpha = decay
    if log_alpha is not None and log_alpha.dim() == 4 and log_alpha.shape[-1] == 1:
        log_alpha = log_alpha.squeeze(-1)
    return k, lr, log_alpha, default_scale(mem, dk) if scale is None else scale
