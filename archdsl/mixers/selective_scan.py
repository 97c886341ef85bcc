"""Mamba's selective scan (S6): a semiseparable mixer per channel, diagonal A per channel.

For each head ``h`` and channel ``p`` (``x [B, T, H, P]``), with state size N::

    s_t = exp(dt_t a) * s_{t-1} + dt_t b_t x_t        (s_t in R^N, a = A[h, p] < 0)
    y_t = c_t . s_t + d x_t

``dt [B, T, H, P]`` (> 0, data-dependent), ``a [H, P, N]`` (< 0), ``b, c [B, T, H, N]``
(shared by the head's channels), ``d [H, P]`` or None. The input uses Mamba's
``dt * b`` (Euler) rather than the exact ZOH ``(exp(dt a) - 1) / a * b``, as its kernel
does. Each channel's matrix is ``m_ij = sum_n c_in b_jn dt_j exp(a_n (dt_{j+1} + .. + dt_i))``
(plus ``d`` on the diagonal). State layout: ``[B, H, P, N]``.

Fast path: a chunk-parallel recurrence. Time is cut into chunks of ``C`` tokens; one
Python loop over the ``C`` positions of a chunk runs the recurrence in *every chunk of a
group at once* (from a zero state; groups of chunks whose states fit in cache), a loop
over the ``T / C`` chunks carries the states between chunks (a chunk's total decay is
``exp(a * sum dt)``, closed form), and a last loop over positions adds each chunk's start
state, decayed by ``exp(a * cumsum dt)``, to the outputs. That is ``2 C + T / C`` small
Python steps per group instead of ``T``, and the same O(T H P N) elementwise work as the
token loop. Without autograd and with large states, the token loop itself is faster (one
exponential per element and token instead of two; `LOOP_MIN_STATE`), and
`selective_scan` takes it. (Why not the per-key-channel chunked scan
of `chunked_ssd` with one "head" per channel and value width 1: its intra-chunk scores
cost O(C) more work per token and it ran 20-60x slower than even a plain token loop at
B=1, H=4, P=64, N=16..64 on CPU; see `bench/bench_mixers.py`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archdsl.memory.chunked_linear import decay_factor


def auto_chunk(length: int) -> int:
    """A chunk size near ``sqrt(T)`` (power of two in [16, 64]): balances the ``2 C`` steps
    over positions against the ``T / C`` steps over chunks."""
    chunk = 16
    while chunk < 64 and chunk * chunk < length:
        chunk *= 2
    return chunk


def selective_scan(
    x: Tensor,
    *,
    dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    causal: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """The mixer's fast path: ``y [B, T, H, P]`` (S6 is causal only)."""
    if not causal:
        raise ValueError(
            "the selective scan (kernel = selective) is causal; for a bidirectional mixer "
            "use cls = quasiseparable (Hydra)"
        )
    if chunk_size is None and _loop_is_faster(x, a):
        return selective_scan_tokens(x, dt=dt, a=a, b=b, c=c, d=d)
    y, _ = selective_scan_chunked(x, dt=dt, a=a, b=b, c=c, d=d, chunk_size=chunk_size)
    return y


# Without autograd, the token loop (one exponential per state element and token) beat the
# chunk-parallel scan (two: it adds every chunk's start state in a second pass) once a
# token's state ``B H P N`` has this many elements: 1.3-2.7x at 16K-98K (B=1..4, H=4..24,
# P=64, N=16..64, T=1024..16384), while at 1K the chunked scan was 6x faster (per-step
# overhead). With autograd the chunked scan won at every size tried (1.3-7x).
LOOP_MIN_STATE = 1 << 13


def _loop_is_faster(x: Tensor, a: Tensor) -> bool:
    """Whether `selective_scan_tokens` is the faster path for this call (see above)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or a.requires_grad)
    state = x.shape[0] * x.shape[2] * x.shape[3] * a.shape[-1]
    return not grad and state >= LOOP_MIN_STATE


def selective_scan_tokens(
    x: Tensor, *, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor | None = None
) -> Tensor:
    """The recurrence token by token (`selective_step`, states ``[B, H, P, N]``); the
    faster path for large states without autograd (`LOOP_MIN_STATE`)."""
    state = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], a.shape[-1])
    a_ = a.to(x.dtype)
    outs = []
    for t in range(x.shape[1]):
        y, state = selective_step(x[:, t], state, dt=dt[:, t], a=a_, b=b[:, t], c=c[:, t], d=d)
        outs.append(y)
    if not outs:
        return x.new_zeros(x.shape)
    return torch.stack(outs, dim=1)


def selective_scan_chunked(
    x: Tensor,
    *,
    dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel selective scan (module docstring); returns ``(y, s_T [B, H, P, N])``.

    ``initial_state``: ``[B, H, P, N]`` or None (zeros). ``chunk_size`` (default
    `auto_chunk`) changes only speed.
    """
    length = x.shape[1]
    chunk_size = auto_chunk(length) if chunk_size is None else chunk_size
    dtc, xc, bc, cc = (_position_major(t, chunk_size) for t in (dt, x, b, c))
    a_ = a.to(x.dtype)
    groups = _chunk_groups(dtc.shape[2], dtc.shape[1] * a.numel())  # state per chunk: B H P N
    dtx = dtc * xc
    scans = [
        _scan_chunks_from_zero(dtc[:, :, g], dtx[:, :, g], bc[:, :, g], cc[:, :, g], a_)
        for g in groups
    ]
    ends = torch.cat([end for _, end in scans], dim=1)
    starts, final = _carry_between_chunks(ends, dtc.sum(0), a_, initial_state)
    dt_cum = dtc.cumsum(0)
    y = torch.cat(
        [
            local + _start_state_outputs(starts[:, g], dt_cum[:, :, g], cc[:, :, g], a_)
            for g, (local, _) in zip(groups, scans)
        ],
        dim=2,
    )
    y = _from_position_major(y, length)
    return (y if d is None else y + x * d), final


# Elements of the ``[B, chunks, H, P, N]`` state that one group of chunks runs at a time
# (~1 MB in float32): each of the ``2 C`` steps over positions streams the state through
# several elementwise ops, which at T = 4096 ran ~1.5x faster from cache than from memory.
STATE_GROUP_ELEMENTS = 1 << 18


def _chunk_groups(n_chunks: int, state_per_chunk: int) -> list[slice]:
    """Slices of the chunk axis whose states hold about ``STATE_GROUP_ELEMENTS``."""
    group = max(1, STATE_GROUP_ELEMENTS // max(1, state_per_chunk))
    return [slice(g0, min(g0 + group, n_chunks)) for g0 in range(0, n_chunks, group)]


def _position_major(t: Tensor, chunk: int) -> Tensor:
    """``[B, T, H, X]`` -> ``[C, B, K, H, X]`` (K chunks), zero-padded at the end.

    Position-major, so that each step of the loops over positions reads contiguous
    memory. Zero padding is neutral: ``dt = 0`` keeps the state and writes nothing.
    """
    bsz, length = t.shape[:2]
    n_chunks = -(-length // chunk)
    t = F.pad(t, (0, 0, 0, 0, 0, n_chunks * chunk - length))
    return t.reshape(bsz, n_chunks, chunk, *t.shape[2:]).movedim(2, 0).contiguous()


def _from_position_major(y: Tensor, length: int) -> Tensor:
    """``[C, B, K, H, P]`` -> ``[B, T, H, P]``."""
    y = y.movedim(0, 2)
    return y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length]


def _scan_chunks_from_zero(
    dt: Tensor, dtx: Tensor, b: Tensor, c: Tensor, a: Tensor
) -> tuple[Tensor, Tensor]:
    """Every chunk's recurrence from a zero state: outputs ``[C, B, K, H, P]`` and end
    states ``[B, K, H, P, N]``."""
    state = dt.new_zeros(*dt.shape[1:], a.shape[-1])
    outs = []
    for i in range(dt.shape[0]):
        state = decay_factor(dt[i].unsqueeze(-1) * a) * state
        state = torch.addcmul(state, dtx[i].unsqueeze(-1), b[i].unsqueeze(-2))
        outs.append((state @ c[i].unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs), state


def _carry_between_chunks(
    ends: Tensor, dt_sum: Tensor, a: Tensor, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """States at every chunk start ``[B, K, H, P, N]`` and after the last chunk."""
    decay = decay_factor(dt_sum.unsqueeze(-1) * a)  # [B, K, H, P, N]
    state = ends.new_zeros(ends[:, 0].shape) if initial_state is None else initial_state
    starts = []
    for k in range(ends.shape[1]):
        starts.append(state)
        state = decay[:, k] * state + ends[:, k]
    return torch.stack(starts, dim=1), state


def _start_state_outputs(starts: Tensor, dt_cum: Tensor, c: Tensor, a: Tensor) -> Tensor:
    """``c_t . (exp(a * cumsum dt) * s_start)`` per position: ``[C, B, K, H, P]``."""
    outs = []
    for i in range(dt_cum.shape[0]):
        decayed = decay_factor(dt_cum[i].unsqueeze(-1) * a) * starts
        outs.append((decayed @ c[i].unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs)


def selective_step(
    x: Tensor, state: Tensor, *, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One token: ``x, dt [B, H, P]``, ``b, c [B, H, N]``, state ``[B, H, P, N]``."""
    state = decay_factor(dt.unsqueeze(-1) * a) * state + (dt * x).unsqueeze(-1) * b.unsqueeze(-2)
    y = (state * c.unsqueeze(-2)).sum(-1)
    return (y if d is None else y + d * x), state


def selective_scan_materialize(
    length: int, *, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor | None = None
) -> Tensor:
    """Per-channel causal matrices ``[B, H, P, T, T]`` (``d`` on the diagonal if given)."""
    cs = dt.cumsum(dim=1).permute(0, 2, 3, 1)  # [B, H, P, T]
    gap = cs.unsqueeze(-1) - cs.unsqueeze(-2)  # dt_{j+1} + .. + dt_i  at [.., i, j]
    keep = torch.ones(length, length, dtype=torch.bool, device=dt.device).tril()
    # [B, H, P, T, T, N]: fine for the oracle's small shapes.
    expo = gap.unsqueeze(-1) * a[None, :, :, None, None, :]
    decay = torch.where(keep[..., None], expo, torch.full_like(expo, float("-inf"))).exp()
    cb = torch.einsum("bihn,bjhn->bhijn", c, b).unsqueeze(2)
    m = (cb * decay).sum(-1) * dt.permute(0, 2, 3, 1).unsqueeze(-2)
    if d is not None:
        m = m + torch.diag_embed(d.unsqueeze(-1).expand(*d.shape, length))
    return m


def selective_materialize(
    length: int,
    *,
    dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    causal: bool = True,
) -> Tensor:
    """The oracle in the registry's calling convention (`selective_scan_materialize`)."""
    if not causal:
        raise ValueError("the selective scan (kernel = selective) is causal only")
    return selective_scan_materialize(length, dt=dt, a=a, b=b, c=c, d=d)


def apply_channel_matrices(m: Tensor, x: Tensor) -> Tensor:
    """``y_i = sum_j m_ij x_j`` per channel: ``m [B, H, P, T, T]``, ``x [B, T, H, P]``."""
    return torch.einsum("bhpij,bjhp->bihp", m.to(x.dtype), x)
