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

Token by token instead (the reference loop with the hand-written gradients of
`inner_grad`): elastic retention (a soft threshold every token), steps(n), and the vector
memory. b = 1 with momentum (Titans with b = 1) degenerates to one-token segments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.carry import Carry, final_state, initial_carry
from archdsl.memory.inner import activation, kl_log_project, lq_normalise, memory_forward
from archdsl.memory.inner import output_norm as _norm
from archdsl.memory.inner_grad import Factors, key_backward, token_gradients
from archdsl.memory.inputs import MemoryInputs, prepare_inputs
from archdsl.memory.reference import check_learner, on_weight, run_token_loop
from archdsl.memory.state import MemoryState


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
        self.log_beta = hm(torch.log(x.momentum)) if x.momentum is not None else None
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
    outs = []
    for s, e in _segments(x.q.shape[2], mem.batch, carry.offset):
        outs.append(_segment(mem, x, carry, s, e))
    return torch.cat(outs, dim=2).transpose(1, 2)


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
    return torch.exp(summed.masked_fill(~lower, float("-inf")))


class _Coefficients:
    """a [B,H,n,c], e [B,H,n,c] | None, C [B,H,n,n,c], and the momentum-end row."""

    def __init__(self, x: _Heads, s: int, e: int) -> None:
        lr = x.lr[:, :, s:e]
        la = x.log_alpha[:, :, s:e]
        d_alpha = segsum_exp(la)
        self.a = torch.exp(torch.cumsum(la, dim=-2))
        self.e: Tensor | None = None
        self.m_end: Tensor | None = None  # [B,H,n,c]: S_end = Pm_n S_s - sum_i m_end[i] g_i
        self.pm_end: Tensor | None = None
        if x.log_beta is None:
            self.C = d_alpha * lr.unsqueeze(-3)
            return
        lb = x.log_beta[:, :, s:e]
        d_mom = segsum_exp(lb)[..., 0]  # [B,H,j,i]
        pm = torch.exp(torch.cumsum(lb, dim=-2))  # [B,H,j,1]
        self.e = torch.einsum("bhtjc,bhj->bhtc", d_alpha, pm[..., 0])
        self.C = torch.einsum("bhtjc,bhji->bhtic", d_alpha, d_mom) * lr.unsqueeze(-3)
        self.m_end = d_mom[:, :, -1].unsqueeze(-1) * lr
        self.pm_end = pm[:, :, -1]


def _segment(mem: Memory, x: _Heads, carry: Carry, s: int, e: int) -> Tensor:
    """Advance ``carry`` over tokens [s, e) of one mini-batch; returns o [B, H, n, dv]."""
    if carry.offset == 0:
        carry.chunk_start = list(carry.weights)
    coef = _Coefficients(x, s, e)
    point = _gradient_point(mem, carry, x, s)
    factors = key_backward(
        mem.structure, mem.bias, point, x.k[:, :, s:e], x.v[:, :, s:e], x.delta[:, :, s:e]
    )
    o = _read(mem, x.q[:, :, s:e], carry, coef, factors)
    _advance(carry, coef, factors)
    carry.offset += e - s
    if carry.offset == mem.batch:
        carry.offset, carry.chunk_start = 0, None
        if carry.acc is not None:
            _project(mem, carry)
            last = memory_forward(mem.structure, tuple(carry.weights), x.q[:, :, e - 1])
            o = torch.cat([o[:, :, :-1], last.unsqueeze(2)], dim=2)
    return o


def _gradient_point(mem: Memory, carry: Carry, x: _Heads, s: int) -> list[Tensor]:
    if mem.batch > 1:
        assert carry.chunk_start is not None
        return carry.chunk_start
    if mem.retention.kind == "decay" and mem.retention.when == "before":
        alpha = torch.exp(x.log_alpha[:, :, s])
        return [on_weight(alpha, w) * w for w in carry.weights]
    return carry.weights


def _rows(c: Tensor) -> Tensor:
    """A per-token coefficient ``[B, H, c]`` laid over the rows of ``[B, H, d_in, d_out]``."""
    return c.unsqueeze(-1)


def _layer_read(
    z: Tensor, w: Tensor, s_w: Tensor | None, coef: _Coefficients, xk: Tensor, dk: Tensor
) -> Tensor:
    """The query inputs z ``[B,H,n,d_in]`` through the per-token weights of one layer."""
    out = (z * coef.a) @ w
    if coef.e is not None and s_w is not None:
        out = out + (z * coef.e) @ s_w
    if coef.C.shape[-1] == 1:
        scores = (z @ xk.transpose(-1, -2)) * coef.C[..., 0]
    else:
        scores = torch.einsum("bhtd,bhtid,bhid->bhti", z, coef.C, xk)
    return out - scores @ dk


def _read(mem: Memory, q: Tensor, carry: Carry, coef: _Coefficients, factors: Factors) -> Tensor:
    struct = mem.structure
    last = len(carry.weights) - 1
    mom = carry.momentum or [None] * (last + 1)  # type: ignore[list-item]
    h = q
    for i, (w, s_w, (xk, dk)) in enumerate(zip(carry.weights, mom, factors)):
        h = _layer_read(h, w, s_w, coef, xk, dk)
        if i < last:
            h = activation(struct.act, h)
    if struct.kind != "mlp":
        return h
    h = _norm(struct.norm, h)
    return q + h if struct.residual else h


def _sum_grads(xk: Tensor, dk: Tensor, coef_rows: Tensor) -> Tensor:
    """sum_i c_i x_i ⊗ delta_i, with c ``[B,H,n,1 or d_in]`` on the input axis."""
    return torch.einsum("bhnd,bhne->bhde", xk * coef_rows, dk)


def _advance(carry: Carry, coef: _Coefficients, factors: Factors) -> None:
    """The segment-end weights, momentum and accumulator."""
    a_end, c_end = _rows(coef.a[:, :, -1]), coef.C[:, :, -1]
    e_end = _rows(coef.e[:, :, -1]) if coef.e is not None else None
    sums = [_sum_grads(xk, dk, c_end) for xk, dk in factors]

    def linear(start: list[Tensor]) -> list[Tensor]:
        out = [a_end * w - g for w, g in zip(start, sums)]
        if e_end is not None and carry.momentum is not None:
            out = [o + e_end * s for o, s in zip(out, carry.momentum)]
        return out

    new_w = linear(carry.weights)
    if carry.acc is not None:
        carry.acc = linear(carry.acc)
    if carry.momentum is not None:
        assert coef.m_end is not None and coef.pm_end is not None
        pm = _rows(coef.pm_end)
        carry.momentum = [
            pm * s - _sum_grads(xk, dk, coef.m_end) for s, (xk, dk) in zip(carry.momentum, factors)
        ]
    carry.weights = new_w


def _project(mem: Memory, carry: Carry) -> None:
    assert carry.acc is not None
    if mem.retention.kind == "lq":
        carry.weights = [lq_normalise(mem.structure, a, mem.retention.q) for a in carry.acc]
        return
    carry.acc = [kl_log_project(mem.structure, a) for a in carry.acc]
    carry.weights = [torch.exp(a) for a in carry.acc]
