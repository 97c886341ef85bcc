"""Intra-chunk decayed scores of the chunked linear memories, stable in every decay.

Within a chunk of ``C`` tokens, with ``b_t`` the cumulative log decay since the chunk
start (``b`` does not increase: every log decay is ``<= 0``)::

    M[t, s] = sum_d x_td y_sd exp(b_td - b_sd)        s <= t  (s < t when strict), else 0

With one decay per head this is ``(x y^T) * exp(b_t - b_s)``. With one decay per key
channel it cannot be one matmul of ``x exp(b)`` and ``y exp(-b)`` (``exp(-b)`` overflows
at strong decays) and the full ``[C, C, d]`` decay tensor is too big: the chunk is split
recursively in halves instead. The block "second half x first half" of each split
factorises exactly around the split point ``r`` (``s <= r < t``) as
``(x_t exp(b_t - b_r)) . (y_s exp(b_r - b_s))``, both factors ``<= 1``, one matmul per
level, ``log2(C)`` levels (the chunk length must be a power of two).

Two forms of that recursion:

- `decayed_scores` takes the cumulative log decay ``b`` and exponentiates the needed
  differences at every level (used by the delta rule);
- `channel_scores` takes the per-token decay *factors* ``alpha_t = exp(log alpha_t)``
  and builds the factors of every level as products of those of the level below (the
  prefix product of a half block is that of its quarter times the total of the other
  quarter), so that a chunk costs one exponential per token and channel instead of one
  per level: on CPU an exponential costs as much as four multiplications. It also
  returns the chunk-level factors ``exp(b_t)``, ``exp(b_C - b_t)`` the chunked forms need.

Stability. Every factor formed is ``<= 1`` (exponentials of non-positive numbers, and
products of such), and floored at ``exp(decay_floor(dtype))`` (float32: ~2.5e-11, far
below its precision): products of up to three floored factors stay out of the subnormal
range, where CPU arithmetic is a hundred times slower. Decays must be finite (``alpha > 0``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from archdsl.memory.workspace import Workspace

# Below this block size the off-diagonal products are formed elementwise: batched matmuls of
# [m, d] x [d, m] with tiny m are dominated by per-matrix overhead on CPU.
_ELEMENTWISE_BELOW = 8


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


def floored_log(rate: Tensor) -> Tensor:
    """``log(rate)`` of a factor in ``[0, 1]`` (a momentum beta), floored at `decay_floor`:
    ``rate = 0`` gives a finite log (no ``-inf - -inf`` in differences of prefix sums, no
    infinite gradient), and the floor is far below the precision it enters.

    The floor is straight-through: the gradient reaches ``rate`` as if unfloored, so a
    product ``exp(log rate + ...)`` differentiates to its true (finite) value at 0, where a
    plain clamp would give 0."""
    floor = decay_floor(rate.dtype)
    if not math.isfinite(floor):
        return torch.log(rate)
    floored = rate + (rate.clamp(min=math.exp(floor)) - rate).detach()
    return torch.log(floored)


def causal_mask(c: int, strict: bool, device: torch.device) -> Tensor:
    """Boolean ``[C, C]``: True where ``s <= t`` (``s < t`` when ``strict``)."""
    return torch.ones(c, c, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def decayed_scores(x: Tensor, y: Tensor, b: Tensor | None, strict: bool) -> Tensor:
    """``M[t, s] = sum_d x_td y_sd exp(b_td - b_sd)`` for ``s <= t`` (``s < t``), else 0.

    x, y: ``[..., C, d]``; b: cumulative log decay within the chunk, ``[..., C]`` (one per
    head), ``[..., C, d]`` (one per channel) or None (no decay). Returns ``[..., C, C]``.
    """
    mask = causal_mask(x.shape[-2], strict, x.device)
    if b is not None and b.dim() == x.dim():
        _check_power_of_two(x.shape[-2], "per-channel decay")
        with torch.no_grad():
            safe = bool(b.min() >= decay_floor(b.dtype))
        if safe:  # as in `channel_scores`: exp(-b) <= exp(-floor), nothing floored
            scores = (x * b.exp()) @ (y * (-b).exp()).transpose(-1, -2)
            return scores.masked_fill(~mask, 0.0)
        return _channel_decayed_scores(x, y, b, strict)
    scores = x @ y.transpose(-1, -2)
    if b is None:
        return scores.masked_fill(~mask, 0.0)
    diff = (b.unsqueeze(-1) - b.unsqueeze(-2)).clamp(min=decay_floor(b.dtype))
    return scores * diff.masked_fill(~mask, float("-inf")).exp()


def _check_power_of_two(c: int, what: str) -> None:
    if c & (c - 1):
        raise ValueError(f"{what} needs a power-of-two chunk size, got {c}")


def _lower_block(x_late: Tensor, y_early: Tensor, m: int) -> Tensor:
    """``x_late @ y_early^T`` over the last two axes (blocks ``[..., m, d]``)."""
    if m < _ELEMENTWISE_BELOW:
        return (x_late.unsqueeze(-2) * y_early.unsqueeze(-3)).sum(-1)
    return x_late @ y_early.transpose(-1, -2)


def _channel_decayed_scores(x: Tensor, y: Tensor, b: Tensor, strict: bool) -> Tensor:
    """`decayed_scores` for per-channel decays, by recursive halving (see module doc).

    Blocks of size ``m`` are merged pairwise into blocks of size ``2m``: the two diagonal
    blocks are kept and the lower-left block is the factorised product around the last
    token of the first half. The chunk length must be a power of two.
    """
    c, d = x.shape[-2], x.shape[-1]
    _check_power_of_two(c, "per-channel decay")
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
        lower = _lower_block(x_late, y_early, m)
        diag = blocks.reshape(*lead, pairs, 2, m, m)
        top = torch.cat([diag[..., 0, :, :], torch.zeros_like(lower)], dim=-1)
        bottom = torch.cat([lower, diag[..., 1, :, :]], dim=-1)
        blocks = torch.cat([top, bottom], dim=-2)
        m *= 2
    return blocks.reshape(*lead, c, c)


class ChannelScores(NamedTuple):
    """What `channel_scores` returns for chunk rows ``[S, C, d]``.

    scores ``[S, C, C]`` (`decayed_scores`, inclusive); q_in ``exp(b_t)`` and k_out
    ``exp(b_C - b_t)``, ``[S, C, dk]`` (the product of the factors from the chunk start up
    to ``t``, inclusive, and after ``t`` up to the chunk end); chunk ``exp(b_C)``,
    ``[S, dk]``. All floored as the module doc says.
    """

    scores: Tensor
    q_in: Tensor
    k_out: Tensor
    chunk: Tensor


def channel_scores(x: Tensor, y: Tensor, alpha: Tensor, ws: Workspace) -> ChannelScores:
    """Per-channel `decayed_scores` (inclusive) of chunk rows ``x, y [S, C, d]`` from the
    per-token decay factors ``alpha [S, C, d]`` (``exp(log alpha)``, floored). ``alpha``
    may also be ``[..., C, d]`` with leading dims of product ``S`` (any strides).

    When no chunk decays below the floor in total (``exp(b_C) >= exp(decay_floor)`` for
    every chunk and channel: the usual case), the scores are one matmul of
    ``x exp(b)`` and ``y exp(-b)`` (`direct_channel_scores`): every ``exp(-b)`` is then at
    most ``exp(-decay_floor)`` (float32: 4e10), far from overflow, and no factor would be
    floored, so it is the halving's result up to rounding. Otherwise (strong decays)
    `halving_channel_scores`.
    """
    s, c, d = x.shape
    _check_power_of_two(c, "per-channel decay")  # whichever path the decays choose
    prefix = torch.cumprod(alpha.reshape(s, c, d), dim=1, out=ws.buf("prefix", (s, c, d), x))
    with torch.no_grad():
        safe = bool(prefix[:, -1].min() >= math.exp(decay_floor(alpha.dtype)))
    if safe:
        return direct_channel_scores(x, y, prefix, ws)
    return halving_channel_scores(x, y, alpha, ws)


def direct_channel_scores(x: Tensor, y: Tensor, prefix: Tensor, ws: Workspace) -> ChannelScores:
    """`channel_scores` from the prefix products ``prefix = exp(b) [S, C, d]`` when none is
    below the floor: ``scores = tril((x exp(b)) (y exp(-b))^T)``."""
    s, c, d = x.shape
    total = prefix[:, -1:]
    x_in = torch.mul(x, prefix, out=ws.buf("x_in", (s, c, d), x))
    y_out = torch.div(y, prefix, out=ws.buf("y_out", (s, c, d), y))
    scores = torch.bmm(x_in, y_out.transpose(1, 2), out=ws.buf("channel_scores", (s, c, c), x))
    mask = causal_mask(c, strict=False, device=x.device)
    scores = scores.masked_fill_(~mask, 0.0) if ws.enabled else scores.masked_fill(~mask, 0.0)
    k_out = torch.div(total, prefix, out=ws.buf("post", (s, c, d), prefix))
    return ChannelScores(scores, prefix, k_out, total[:, 0])


def halving_channel_scores(x: Tensor, y: Tensor, alpha: Tensor, ws: Workspace) -> ChannelScores:
    """`channel_scores` by recursive halving with products of factors (see the module
    doc); valid at any decay strength.

    Level ``m`` merges blocks of ``m`` tokens pairwise. ``pre`` holds, for every token, the
    product of the factors from the start of its block up to itself (inclusive), ``post``
    that after it up to the block end; the lower-left block of a pair is
    ``(x_t pre_t) . (y_s post_s)``, and merging multiplies ``pre`` of the second half by the
    total of the first half and ``post`` of the first half by the total of the second.
    With an enabled workspace (no autograd) everything is written into its buffers and
    ``pre``, ``post`` are updated in place; otherwise every level builds new tensors. The
    results are views of workspace buffers, valid until the next call. The chunk length
    must be a power of two.
    """
    s, c, d = x.shape
    _check_power_of_two(c, "per-channel decay")
    floor = math.exp(decay_floor(alpha.dtype))
    pre, post, scores = _start_buffers(alpha, x, ws)
    diagonal = torch.mul(x, y, out=ws.buf("outer", (s, c, d), x)).sum(-1)
    scores.diagonal(dim1=1, dim2=2).copy_(diagonal)
    m = 1
    while m < c:
        pairs = c // (2 * m)
        half = (s, pairs, m, d)
        xs, ys = x.view(s, pairs, 2, m, d), y.view(s, pairs, 2, m, d)
        pres, posts = pre.view(s, pairs, 2, m, d), post.view(s, pairs, 2, m, d)
        x_late = torch.mul(xs[:, :, 1], pres[:, :, 1], out=ws.buf("x_late", half, x))
        y_early = ys[:, :, 0]
        if m > 1:
            y_early = torch.mul(y_early, posts[:, :, 0], out=ws.buf("y_early", half, y))
        _lower_product(x_late, y_early, _lower_blocks(scores, m), ws)
        first_total, second_total = pres[:, :, 0, m - 1 :], pres[:, :, 1, m - 1 :]
        if ws.enabled:
            posts[:, :, 0].mul_(second_total).clamp_(min=floor)
            pres[:, :, 1].mul_(first_total).clamp_(min=floor)
        else:
            post = _times_half(posts, 0, second_total, floor).view(s, c, d)
            pre = _times_half(pres, 1, first_total, floor).view(s, c, d)
        m *= 2
    return ChannelScores(scores, pre, post, pre[:, -1])


def _start_buffers(alpha: Tensor, x: Tensor, ws: Workspace) -> tuple[Tensor, Tensor, Tensor]:
    """``pre = alpha``, ``post = 1`` and zero scores ``[S, C, C]``: workspace buffers
    (updated in place later) or, without, tensors that are never written to."""
    s, c, d = x.shape
    pre, post = ws.buf("pre", (s, c, d), alpha), ws.buf("post", (s, c, d), alpha)
    scores = ws.buf("channel_scores", (s, c, c), x)
    if pre is None or post is None or scores is None:
        return alpha.reshape(s, c, d), x.new_ones(s, c, d), x.new_zeros(s, c, c)
    pre.view(alpha.shape).copy_(alpha)
    return pre, post.fill_(1.0), scores.zero_()


def _times_half(blocks: Tensor, half: int, factor: Tensor, floor: float) -> Tensor:
    """``blocks [S, P, 2, m, d]`` with half ``half`` times ``factor [S, P, 1, d]``,
    floored (a new tensor: the autograd form of the in-place update)."""
    scaled = (blocks[:, :, half] * factor).clamp(min=floor)
    kept = blocks[:, :, 1 - half]
    return torch.stack([scaled, kept] if half == 0 else [kept, scaled], dim=2)


def _lower_product(x_late: Tensor, y_early: Tensor, target: Tensor, ws: Workspace) -> None:
    """``target = x_late @ y_early^T`` over the last two axes (blocks ``[S, P, m, d]``),
    ``target`` a view into the scores. Below ``_ELEMENTWISE_BELOW`` elementwise."""
    m = x_late.shape[-2]
    if m < _ELEMENTWISE_BELOW:
        shape = (*x_late.shape[:-1], m, x_late.shape[-1])
        outer = torch.mul(
            x_late.unsqueeze(-2), y_early.unsqueeze(-3), out=ws.buf(f"outer{m}", shape, x_late)
        )
        if ws.enabled:
            torch.sum(outer, -1, out=target)
        else:
            target.copy_(outer.sum(-1))
    else:  # into a buffer: a strided out= makes matmul loop over the blocks one by one
        s, pairs = x_late.shape[:2]
        lower = ws.buf(f"lower{m}", (s * pairs, m, m), x_late)
        flat_x, flat_y = x_late.reshape(s * pairs, m, -1), y_early.reshape(s * pairs, m, -1)
        lower = torch.bmm(flat_x, flat_y.transpose(1, 2), out=lower)
        target.copy_(lower.view(s, pairs, m, m))


def _lower_blocks(scores: Tensor, m: int) -> Tensor:
    """View ``[S, C/(2m), m, m]`` of the lower-left ``m x m`` block of every aligned
    ``2m x 2m`` diagonal block of a contiguous ``scores [S, C, C]``."""
    s, c = scores.shape[0], scores.shape[-1]
    size = (s, c // (2 * m), m, m)
    stride = (c * c, 2 * m * (c + 1), c, 1)
    return scores.as_strided(size, stride, scores.storage_offset() + m * c)


def decayed_prefix_sum(x: Tensor, b: Tensor) -> Tensor:
    """``w_t = sum_{s <= t} exp(b_t - b_s) x_s`` within each chunk, elementwise in ``d``.

    x: ``[..., C, d]``; b: ``[..., C, d]`` or ``[..., C, 1]`` (broadcast over d). Same
    recursive halving as `_channel_decayed_scores`, but each level adds one summed vector
    per block, so the cost is ``O(C log C d)``.
    """
    c = x.shape[-2]
    _check_power_of_two(c, "decayed prefix sums")
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
