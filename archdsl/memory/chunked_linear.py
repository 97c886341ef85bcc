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
everything is batched over its chunks except the chunk-to-chunk recurrence, a loop of
state multiply-adds (`archdsl.memory.chunked_segments`, which runs the segments). A
segment's intermediates stay in cache, and without autograd they are written into buffers
that every segment reuses (`Workspace`); this, not the arithmetic (about 16x fewer flops
than ``M @ x`` at T = 4096), is what decides the speed on CPU.
The vector structure is batched over all chunks at once, its recurrence a loop of
elementwise multiply-adds.

Stability (log space). Every exponential is of a *non-positive* number: ``b_t``,
``b_C - b_s`` and ``b_t - b_s`` for ``s <= t`` (the decays are ``<= 0``). The intra-chunk
decay matrix is clamped to ``<= 0`` above the diagonal *before* ``exp`` and zeroed there
after, so no ``inf * 0`` appears. The one exception: with one decay per head, segments
whose chunks all decay by at most twice the floor (below) in total build that matrix
without exponentials, as the outer product of ``exp(b_t - m)`` and ``exp(m - b_s)``
around each chunk's midpoint ``m = b_C / 2`` (each factor within ``exp(+-floor)``).
With one decay per key channel the intra-chunk scores come from
`archdsl.memory.decayed_scores.channel_scores` (recursive halving, every factor a product
of per-token factors ``alpha_t <= 1``, no exponential beyond ``alpha_t`` itself).
Decays must be finite (``alpha > 0``). Every factor is floored at
``exp(decay_floor(dtype))`` (float32: ~2.5e-11, far below its precision), which keeps the
products of up to three factors that the chunked forms build out of the subnormal range,
where CPU arithmetic is a hundred times slower (`decay_floor`). From chunk to chunk the
state is multiplied by each chunk's total decay ``exp(b_C)``, one chunk at a time.

The functions here are also the building blocks of `archdsl.memory.chunked_delta`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.chunked_segments import run_segments, to_rows
from archdsl.memory.decayed_scores import (
    causal_mask,
    decay_factor,
    decay_floor,
    decayed_prefix_sum,
    decayed_scores,
)
from archdsl.memory.inputs import check_arguments, default_scale
from archdsl.memory.state import MemoryState
from archdsl.memory.workspace import Workspace

# The intra-chunk helpers live in decayed_scores; chunked_delta and the mixers import them
# from here too.
__all__ = [
    "DEFAULT_CHUNK",
    "SEGMENT_TOKEN_HEADS",
    "causal_mask",
    "chunked_gated_linear",
    "decay_factor",
    "decay_floor",
    "decayed_prefix_sum",
    "decayed_scores",
    "from_chunks",
    "gated_linear_matrix",
    "gated_linear_vector_chunks",
    "head_or_channel",
    "initial_weights",
    "segment_chunks",
    "to_chunks",
]

# Also the default of the mixers that share chunked_gated_linear (they import it: mixer and
# memory must agree to be bit-identical) and of the delta rule. On CPU at dk = dv = 64, 32
# is 5-15% faster than 64 for the gated linear and delta memories, forward and backward,
# and no slower for the mixers (the intra-chunk work is O(C) per token, the state traffic
# O(dk dv / C)).
DEFAULT_CHUNK = 32
# Tokens x heads x batch per segment of the matrix memory (`segment_chunks`): a segment's
# intermediates (a few [C, C] and [dk, dv] blocks per chunk) then stay in the CPU caches.
SEGMENT_TOKEN_HEADS = 2048


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
    (`segment_chunks`), run one after another by `archdsl.memory.chunked_segments`.
    """
    bsz, t, h, _ = q.shape
    if t == 0:
        return q.new_zeros(bsz, 0, h, v.shape[-1]), s0
    per_segment = min(segment_chunks(bsz * h, chunk), -(-t // chunk))
    leaves = [y for y in (q, k, v, lr, s0, log_alpha) if isinstance(y, Tensor)]
    ws = Workspace(not (torch.is_grad_enabled() and any(y.requires_grad for y in leaves)))
    io = _InOrder(q, k, v, lr, scale, chunk, per_segment * chunk, ws)
    state = run_segments(io, log_alpha, s0, t, chunk, per_segment, ws)
    return io.output(), state


class _InOrder:
    """`SegmentRows` of ``[B, T, H, d]`` inputs read in order; the output is written into
    one ``[B, T, H, dv]`` tensor (workspace enabled) or gathered piece by piece."""

    def __init__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor | float,
        scale: float,
        chunk: int,
        seg_len: int,
        ws: Workspace,
    ) -> None:
        self.chunk, self.scale = chunk, scale
        self.out = q.new_empty(*q.shape[:3], v.shape[-1]) if ws.enabled else None
        self.pieces: list[Tensor] = []
        # split, not slicing: the backward of one slice per segment would materialise a
        # full-size zero gradient per segment
        segments = -(-q.shape[1] // seg_len)
        rates = lr.split(seg_len, dim=1) if isinstance(lr, Tensor) else [lr] * segments
        self.parts = list(
            zip(q.split(seg_len, dim=1), k.split(seg_len, dim=1), v.split(seg_len, dim=1), rates)
        )

    def read(
        self, index: int, t0: int, t1: int, rows: int, ws: Workspace
    ) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, lr = self.parts[index]
        b, _, h, dk = q.shape
        dv, chunk = v.shape[-1], self.chunk
        rate = None if isinstance(lr, float) and lr == 1.0 else lr
        return (
            to_rows(q, chunk, rows, None, ws.buf("q", (b, h, rows, dk), q)),
            to_rows(k, chunk, rows, rate, ws.buf("k", (b, h, rows, dk), k)),
            to_rows(v, chunk, rows, None, ws.buf("v", (b, h, rows, dv), v)),
        )

    def write(self, o: Tensor, t0: int, t1: int, ws: Workspace) -> None:
        o = o[:, :, : t1 - t0].transpose(1, 2)
        target = None if self.out is None else self.out[:, t0:t1]
        if self.scale != 1.0:
            o = torch.mul(o, self.scale, out=target)
        elif target is not None:
            target.copy_(o)
        self.pieces.append(o)

    def output(self) -> Tensor:
        return torch.cat(self.pieces, dim=1) if self.out is None else self.out


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
