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

Everything but the chunk-to-chunk state recurrence is batched over all chunks at once;
that recurrence is a Python loop over chunks of elementwise multiply-adds.

Stability (log space). Every exponential is of a *non-positive* number: ``b_t``,
``b_C - b_s`` and ``b_t - b_s`` for ``s <= t`` (the decays are ``<= 0``). The intra-chunk
decay matrix is masked to its causal part *before* ``exp`` (``-inf`` above the diagonal), so
no ``inf * 0`` appears. With one decay per key channel the intra-chunk scores cannot be one
matmul of ``q exp(b)`` and ``k exp(-b)`` (``exp(-b)`` overflows at strong decays), and the
full ``[C, C, dk]`` decay tensor is too big; `decayed_scores` instead splits the chunk
recursively in halves: the block "second half x first half" of each split factorises
exactly around the split point ``r`` (``s <= r < t``) as
``(q_t exp(b_t - b_r)) . (k_s exp(b_r - b_s))``, both factors ``<= 1``, one matmul per level,
``log2(C)`` levels. Decays must be finite (``alpha > 0``). Every factor is floored at
``exp(decay_floor(dtype))`` (float32: ~2.5e-11, far below its precision), which keeps the
products of up to three factors that the chunked forms build out of the subnormal range,
where CPU arithmetic is a hundred times slower (`decay_floor`).

The functions here are also the building blocks of `archdsl.memory.chunked_delta`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.inputs import prepare_inputs
from archdsl.memory.state import MemoryState

DEFAULT_CHUNK = 64
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


def gated_linear_matrix_chunks(
    q: Tensor, k: Tensor, v: Tensor, b: Tensor | None, s0: Tensor
) -> tuple[Tensor, Tensor]:
    """Matrix memory on chunked inputs. Returns ``(o, final_state)``.

    q, k ``[B, H, N, C, dk]`` (q already scaled, k already multiplied by lr), v
    ``[B, H, N, C, dv]``, b the cumulative log decay ``[B, H, N, C]`` / ``[B, H, N, C, dk]``
    / None, s0 ``[B, H, dk, dv]``. o: ``[B, H, N, C, dv]``.
    """
    o = decayed_scores(q, k, b, strict=False) @ v
    if b is None:
        q_in, k_out, chunk_decay = q, k, None
    else:
        bk = b if b.dim() == q.dim() else b.unsqueeze(-1)
        b_last = bk[..., -1:, :]
        q_in = q * decay_factor(bk)
        k_out = k * decay_factor(b_last - bk)
        chunk_decay = decay_factor(b_last).transpose(-1, -2)  # [B, H, N, dk or 1, 1]
    writes = k_out.transpose(-1, -2) @ v
    states = _chunk_start_states(s0, chunk_decay, writes)
    o = o + q_in @ torch.stack(states[:-1], dim=2)
    return o, states[-1]


def gated_linear_vector_chunks(
    q: Tensor, k: Tensor, v: Tensor, b: Tensor | None, s0: Tensor
) -> tuple[Tensor, Tensor]:
    """Vector (elementwise) memory on chunked inputs ``[B, H, N, C, d]``; s0 ``[B, H, d]``.

    Same conventions as `gated_linear_matrix_chunks`. Returns ``(o, final_state)``.
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
    and normalised by `archdsl.memory.inputs.prepare_inputs`, as for the reference: the
    scale (argument, else ``features.scale``, else dk^-1/2) and HGRN2's tied key
    (``retention.tie_key``: k = 1 - alpha) come from there; momentum must be None and
    delta is ignored. State: matrix ``W [B, H, dk, dv]``, vector ``w [B, H, dk]``
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
    x = prepare_inputs(
        mem, q, k, v, lr=lr, decay=decay, momentum=momentum, delta=delta, scale=scale
    )
    bsz, t, h, dk = x.q.shape
    dv = x.v.shape[-1]
    log_alpha = head_or_channel(x.log_alpha)
    b = None if log_alpha is None else to_chunks(log_alpha, chunk).cumsum(dim=3)
    s0 = initial_weights(initial_state)
    if s0 is None:
        s0 = x.q.new_zeros((bsz, h, dk, dv) if mem.structure.kind == "matrix" else (bsz, h, dk))
    run = (
        gated_linear_vector_chunks if mem.structure.kind == "vector" else gated_linear_matrix_chunks
    )
    qc, kc, vc = (to_chunks(y, chunk) for y in (x.q, x.k * x.lr, x.v))
    o, final = run(qc, kc, vc, b, s0)
    return from_chunks(o, t), (MemoryState((final,)) if output_final_state else None)
