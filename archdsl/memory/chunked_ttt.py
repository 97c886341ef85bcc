"""Chunked mini-batch test-time training: the fast torch path for deep memories.

Same contract and numbers as `archdsl.memory.reference.memory_reference` (see there for
the semantics). The sequence is cut into segments that never cross a mini-batch
boundary (b tokens; the first segment finishes a mini-batch left open by a previous
call). In a segment every gradient is taken at one point P (the chunk-start W0; for
b = 1 the retained previous state), so for the linear retentions (none, decay, and lq /
kl inside a chunk) the state is linear in the gradients:

    W_t = a_t W_s + e_t S_s - sum_{i <= t} C[t, i] g_i,     g_i = x_i ⊗ delta_i per layer,

with W_s, S_s the weights and momentum at the segment start, ``a_t = prod alpha``,
and for momentum (S_t = beta_t S_{t-1} - lr_t g_t, W_t = alpha_t W_{t-1} + S_t)
``e_t = sum_j Da[t, j] Pm_j``, ``C[t, i] = lr_i sum_j Da[t, j] Dm[j, i]`` (Da, Dm: the
decay / momentum products between two positions, built as segment sums in log space).
The reads use this form layer by layer (the TTT "dual form"): the query's input z to a
layer meets ``(z ⊙ a_t) W_s + (z ⊙ e_t) S_s - sum_i C[t, i] (z · x_i) delta_i``, so no
per-token weights are formed, for matrix and mlp memories alike. Only the segment-end
weights are formed (they are the next state); where a chunk ends, lq / kl apply Moneta's
normalisation / Memora's softmax to them and the chunk's last token is read again with
the projected weights.

Cost on CPU (where the small per-chunk ops, forward and backward, cost as much as the
matrix products): the gates' coefficients and the per-segment views of q, k, v are built
for all full mini-batches at once before the sequential loop (`chunked_ttt_coef`); the key
pass returns the *negated* deltas (`chunked_ttt_silu.negated_key_backward`, silu and
silu' fused in one autograd node), so every "minus a sum of gradients" is an added
product (baddbmm); per-head scalar coefficients are applied to the narrower factor of
each product.

The 2-layer mlp memory with the l2 bias (Titans' LMM, TTT-MLP), retention none / decay, gd /
momentum, b > 1, in a call that starts at a mini-batch boundary, runs the same formulas as
one autograd node with a hand-written backward (`chunked_ttt_mlp`, `chunked_ttt_mlp_step`):
the chunk steps record no autograd graph (otherwise a few hundred small nodes per chunk).

Token by token instead (the reference loop with the hand-written gradients of
`inner_grad`): elastic retention (a soft threshold every token), steps(n), and the vector
memory. b = 1 with momentum (Titans with b = 1) degenerates to one-token segments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.carry import Carry, final_state, initial_carry
from archdsl.memory.chunked_ttt_coef import (
    Coefficients,
    SegmentInputs,
    segment_inputs,
    segsum_exp,
)
from archdsl.memory.chunked_ttt_mlp import fused_mlp_applies, run_fused_mlp
from archdsl.memory.chunked_ttt_silu import negated_key_backward, silu_and_grad
from archdsl.memory.decayed_scores import floored_log
from archdsl.memory.inner import activation, kl_log_project, lq_normalise, memory_forward
from archdsl.memory.inner import output_norm as _norm
from archdsl.memory.inner_grad import Factors, token_gradients
from archdsl.memory.inputs import MemoryInputs, prepare_inputs
from archdsl.memory.reference import check_learner, on_weight, run_token_loop
from archdsl.memory.state import MemoryState

__all__ = ["chunked_minibatch_ttt", "runs_token_by_token", "segsum_exp"]


def chunked_minibatch_ttt(
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
) -> tuple[Tensor, MemoryState | None]:
    """The chunked form of `memory_reference` (same arguments, same results)."""
    check_learner(mem, lr)
    x = prepare_inputs(
        mem, q, k, v, lr=lr, decay=decay, momentum=momentum, delta=delta, scale=scale
    )
    carry = initial_carry(mem, initial_state, x.q, x.v)
    if runs_token_by_token(mem):
        o = run_token_loop(mem, x, carry, _hand_grad_fn(mem))
    elif fused_mlp_applies(mem, carry):
        o = run_fused_mlp(mem, x, carry)
    else:
        o = _run_segments(mem, _Heads.of(x), carry)
    return o, final_state(carry) if output_final_state else None


def runs_token_by_token(mem: Memory) -> bool:
    """The combinations this module runs with a token loop (see the module doc)."""
    return (
        mem.retention.kind == "elastic"
        or mem.learner.kind in ("steps", "implicit")
        or mem.structure.kind == "vector"
    )


def _hand_grad_fn(mem: Memory):  # type: ignore[no-untyped-def]
    def grads(w: tuple[Tensor, ...], k: Tensor, v: Tensor, d: Tensor) -> tuple[Tensor, ...]:
        return token_gradients(mem.structure, mem.bias, w, k, v, d)

    return grads


class _Heads:
    """The inputs in head-major layout ``[B, H, T, ...]``; gates keep a channel axis."""

    def __init__(self, x: MemoryInputs) -> None:
        def hm(t: Tensor) -> Tensor:
            return t.transpose(1, 2)

        self.q, self.k, self.v, self.lr = hm(x.q), hm(x.k), hm(x.v), hm(x.lr)
        zeros = torch.zeros_like(x.lr[..., :1])
        self.log_alpha = hm(x.log_alpha if x.log_alpha is not None else zeros)
        self.log_beta = hm(floored_log(x.momentum)) if x.momentum is not None else None
        self.delta = x.delta.transpose(1, 2)

    @classmethod
    def of(cls, x: MemoryInputs) -> _Heads:
        return cls(x)


def _segments(T: int, b: int, offset: int) -> list[tuple[int, int]]:
    """[start, stop) of each segment: the first one completes the open mini-batch."""
    out, s = [], 0
    first = b - offset
    while s < T:
        n = min(first if s == 0 else b, T - s)
        out.append((s, s + n))
        s += n
    return out


def _run_segments(mem: Memory, x: _Heads, carry: Carry) -> Tensor:
    segments = _segments(x.q.shape[2], mem.batch, carry.offset)
    inputs = segment_inputs(
        x.q, x.k, x.v, x.delta, x.lr, x.log_alpha, x.log_beta, segments, mem.batch
    )
    outs = [_segment(mem, seg, carry) for seg in inputs]
    return torch.cat(outs, dim=2).transpose(1, 2)


def _segment(mem: Memory, seg: SegmentInputs, carry: Carry) -> Tensor:
    """Advance ``carry`` over the n tokens of one segment; returns o [B, H, n, dv]."""
    if carry.offset == 0:
        carry.chunk_start = list(carry.weights)
    coef = seg.coef
    point = _gradient_point(mem, carry, seg)
    factors = negated_key_backward(mem.structure, mem.bias, point, seg.k, seg.v, seg.delta)
    o = _read(mem, seg.q, carry, coef, factors)
    _advance(carry, coef, factors)
    carry.offset += seg.q.shape[2]
    if carry.offset == mem.batch:
        carry.offset, carry.chunk_start = 0, None
        if carry.acc is not None:
            _project(mem, carry)
            last = memory_forward(mem.structure, tuple(carry.weights), seg.q[:, :, -1])
            o = torch.cat([o[:, :, :-1], last.unsqueeze(2)], dim=2)
    return o


def _gradient_point(mem: Memory, carry: Carry, seg: SegmentInputs) -> list[Tensor]:
    if mem.batch > 1:
        assert carry.chunk_start is not None
        return carry.chunk_start
    if mem.retention.kind == "decay" and mem.retention.when == "before":
        alpha = torch.exp(seg.log_alpha0)
        return [on_weight(alpha, w) * w for w in carry.weights]
    return carry.weights


def _rows(c: Tensor) -> Tensor:
    """A per-token coefficient ``[B, H, c]`` laid over the rows of ``[B, H, d_in, d_out]``."""
    return c.unsqueeze(-1)


def _row_scaled_mm(z: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """``(z * c) @ w`` for a per-row coefficient c ``[..., n, 1 or d_in]``; a per-row scalar
    is applied on the narrower side of the product (fewer multiplies)."""
    if c.shape[-1] == 1 and z.shape[-1] > w.shape[-1]:
        return (z @ w) * c
    return (z * c) @ w


def _layer_read(
    z: Tensor, w: Tensor, s_w: Tensor | None, coef: Coefficients, xk: Tensor, dk: Tensor
) -> Tensor:
    """The query inputs z ``[B,H,n,d_in]`` through the per-token weights of one layer
    (xk, dk: the layer's input and *negated* delta of each key token)."""
    out = _row_scaled_mm(z, w, coef.a)
    if coef.e is not None and s_w is not None:
        if coef.e.shape[-1] == 1 and z.shape[-1] > s_w.shape[-1]:
            out = torch.addcmul(out, z @ s_w, coef.e)
        else:
            out = _plus_mm(out, z * coef.e, s_w)
    if coef.C.shape[-1] == 1:
        scores = (z @ xk.transpose(-1, -2)) * coef.C[..., 0]
    else:
        scores = torch.einsum("bhtd,bhtid,bhid->bhti", z, coef.C, xk)
    return _plus_mm(out, scores, dk)


def _read(mem: Memory, q: Tensor, carry: Carry, coef: Coefficients, factors: Factors) -> Tensor:
    struct = mem.structure
    last = len(carry.weights) - 1
    mom = carry.momentum or [None] * (last + 1)  # type: ignore[list-item]
    h = q
    for i, (w, s_w, (xk, dk)) in enumerate(zip(carry.weights, mom, factors)):
        h = _layer_read(h, w, s_w, coef, xk, dk)
        if i < last:
            h = silu_and_grad(h)[0] if struct.act == "silu" else activation(struct.act, h)
    if struct.kind != "mlp":
        return h
    h = _norm(struct.norm, h)
    return q + h if struct.residual else h


def _plus_mm(acc: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``acc + x @ y`` over shared leading dims, as one baddbmm."""

    def flat(t: Tensor) -> Tensor:
        return t.reshape(-1, *t.shape[-2:])

    out = torch.baddbmm(flat(acc), flat(x), flat(y))
    return out.view(*acc.shape[:-2], *out.shape[-2:])


def _grad_factors(xk: Tensor, dk: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(X, D) with ``X @ D = sum_i c_i x_i ⊗ dk_i`` (dk = -delta: minus the gradient sum),
    c ``[B,H,n,1 or d_in]`` on the input axis; a per-row scalar goes on the narrower factor."""
    if c.shape[-1] == 1 and dk.shape[-1] < xk.shape[-1]:
        return xk.transpose(-1, -2), dk * c
    return (xk * c).transpose(-1, -2), dk


def _advance(carry: Carry, coef: Coefficients, factors: Factors) -> None:
    """The segment-end weights, momentum and accumulator."""
    a_end, c_end = _rows(coef.a[:, :, -1]), coef.C[:, :, -1]
    e_end = _rows(coef.e[:, :, -1]) if coef.e is not None else None
    grads = [_grad_factors(xk, dk, c_end) for xk, dk in factors]

    def linear(start: list[Tensor]) -> list[Tensor]:
        kept = [a_end * w for w in start]
        if e_end is not None and carry.momentum is not None:
            kept = [torch.addcmul(k, e_end, s) for k, s in zip(kept, carry.momentum)]
        return [_plus_mm(k, x, d) for k, (x, d) in zip(kept, grads)]

    new_w = linear(carry.weights)
    if carry.acc is not None:
        carry.acc = linear(carry.acc)
    if carry.momentum is not None:
        assert coef.m_end is not None and coef.pm_end is not None
        pm = _rows(coef.pm_end)
        carry.momentum = [
            _plus_mm(pm * s, *_grad_factors(xk, dk, coef.m_end))
            for s, (xk, dk) in zip(carry.momentum, factors)
        ]
    carry.weights = new_w


def _project(mem: Memory, carry: Carry) -> None:
    assert carry.acc is not None
    if mem.retention.kind == "lq":
        carry.weights = [lq_normalise(mem.structure, a, mem.retention.q) for a in carry.acc]
        return
    carry.acc = [kl_log_project(mem.structure, a) for a in carry.acc]
    carry.weights = [torch.exp(a) for a in carry.acc]
