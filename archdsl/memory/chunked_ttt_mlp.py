"""`chunked_ttt` for 2-layer mlp memories with the l2 bias (Titans' LMM, TTT-MLP) as one
autograd node.

`MlpChunkScan` runs all mini-batches of a call in its forward (`chunked_ttt_mlp_step.
chunk_forward` per chunk, no autograd recording) and walks them backwards in its
hand-written backward (`chunk_backward`), so the outer autograd graph holds one node for
the whole scan instead of a few hundred small ones per chunk. The coefficients are built
outside the node (`chunked_ttt_coef.coefficients`, ordinary autograd), so the gates get
their gradients through them. Without gradients (`torch.no_grad`, or no input requiring
one) the same chunk steps run without keeping their intermediates (`scan_chunks`).

`fused_mlp_applies` says when `chunked_ttt` takes this path: an mlp memory of depth 2 (any
activation; output norm none, layer or rms), the l2 bias, retention none or decay, gd or
momentum, mini-batches b > 1, and a call that starts at a mini-batch boundary. Everything
else stays on the general path of `chunked_ttt` (same numbers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from archdsl.ir.memory import Memory
from archdsl.memory.carry import Carry
from archdsl.memory.chunked_ttt_coef import coefficients
from archdsl.memory.chunked_ttt_mlp_step import (
    ChunkCoefs,
    MlpForm,
    State,
    Tape,
    chunk_backward,
    chunk_forward,
)
from archdsl.memory.decayed_scores import floored_log
from archdsl.memory.inputs import MemoryInputs

__all__ = ["MlpChunkScan", "fused_mlp_applies", "run_fused_mlp", "scan_chunks"]


def fused_mlp_applies(mem: Memory, carry: Carry) -> bool:
    """Whether `run_fused_mlp` computes this call (see the module doc)."""
    st = mem.structure
    return (
        st.kind == "mlp"
        and st.depth == 2
        and mem.bias.kind == "l2"
        and mem.retention.kind in ("none", "decay")
        and mem.learner.kind in ("gd", "momentum")
        and mem.batch > 1
        and carry.offset == 0
        and carry.acc is None
    )


def _coefs_at(
    a: Tensor, C: Tensor, e: Tensor | None, m: Tensor | None, pm: Tensor | None, j: int
) -> ChunkCoefs:
    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[j]

    return ChunkCoefs(a[j], C[j], pick(e), pick(m), pick(pm))


def scan_chunks(
    form: MlpForm,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    coefs: tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None],
    st: State,
    tapes: list[Tape] | None = None,
) -> tuple[Tensor, State]:
    """The forward of `MlpChunkScan` (same arguments; coefs = (a, C, e, m, pm)), appending
    each chunk's tape to ``tapes`` if given. Without tapes (no gradient wanted) each chunk's
    intermediates are freed at once, so their memory is reused while it is in cache."""
    outs = []
    keep = tapes is not None
    for j in range(q.shape[0]):
        o, st, tape = chunk_forward(st, q[j], k[j], v[j], _coefs_at(*coefs, j), form, keep)
        outs.append(o)
        if tapes is not None and tape is not None:
            tapes.append(tape)
    return torch.stack(outs), st


class MlpChunkScan(torch.autograd.Function):
    """All chunks of one call: chunk-major inputs ``[N, G, n, ...]`` (N chunks of n tokens,
    G = batch x heads): q, k ``[N, G, n, dk]``, v ``[N, G, n, dv]``, a ``[N, G, n, 1]``, C
    ``[N, G, n, n]``, e, m ``[N, G, n, 1]``, pm ``[N, G, 1, 1]`` (e, m, pm None without
    momentum), state W1 ``[G, dk, h]``, W2 ``[G, h, dv]``, S1, S2 alike or None.
    Returns o ``[N, G, n, dv]`` and the final W1, W2, S1, S2."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        form: MlpForm,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        a: Tensor,
        C: Tensor,
        e: Tensor | None,
        m: Tensor | None,
        pm: Tensor | None,
        w1: Tensor,
        w2: Tensor,
        s1: Tensor | None,
        s2: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        tapes: list[Tape] = []
        o, st = scan_chunks(form, q, k, v, (a, C, e, m, pm), (w1, w2, s1, s2), tapes)
        ctx.form = form
        ctx.tapes = tapes
        ctx.save_for_backward(q, k, a, C, e, m, pm)
        return o, *st

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any,
        go: Tensor | None,
        gw1: Tensor | None,
        gw2: Tensor | None,
        gs1: Tensor | None,
        gs2: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        q, k, a, C, e, m, pm = ctx.saved_tensors
        tapes: list[Tape] = ctx.tapes
        last = tapes[-1].state
        g: State = (
            _or_zeros(gw1, last[0]),
            _or_zeros(gw2, last[1]),
            None if last[2] is None else _or_zeros(gs1, last[2]),
            None if last[3] is None else _or_zeros(gs2, last[3]),
        )
        n_chunks = q.shape[0]
        go_all = go if go is not None else q.new_zeros(*q.shape[:3], tapes[0].d2.shape[-1])
        parts: list[list[Tensor | None]] = [[] for _ in range(8)]
        for j in range(n_chunks - 1, -1, -1):
            cf = _coefs_at(a, C, e, m, pm, j)
            grads, g = chunk_backward(tapes[j], q[j], k[j], cf, ctx.form, go_all[j], g)
            for store, x in zip(
                parts, (grads.q, grads.k, grads.v, grads.a, grads.C, grads.e, grads.m, grads.pm)
            ):
                store.append(x)
        gq, gk, gv, ga, gC, ge, gm, gpm = (_stack_reversed(p) for p in parts)
        return (None, gq, gk, gv, ga, gC, ge, gm, gpm, *g)


def _or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _stack_reversed(parts: list[Tensor | None]) -> Tensor | None:
    if parts[0] is None:
        return None
    return torch.stack(parts[::-1])  # type: ignore[arg-type]


def run_fused_mlp(mem: Memory, x: MemoryInputs, carry: Carry) -> Tensor:
    """Advance ``carry`` over the whole call with `MlpChunkScan`; returns o ``[B, T, H, dv]``.

    Full mini-batches go through one scan; a partial last one (T not a multiple of b)
    through a second, and its start weights stay in ``carry`` as the chunk start."""
    B, T, H, _ = x.q.shape
    b = mem.batch
    n_full = (T // b) * b
    outs = []
    for start, stop in ((0, n_full), (n_full, T)):
        if stop > start:
            if stop - start < b:
                carry.chunk_start = list(carry.weights)
            outs.append(_scan(mem, x, carry, start, stop, min(b, stop - start)))
    carry.offset = T - n_full
    if carry.offset == 0:
        carry.chunk_start = None
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def _scan(mem: Memory, x: MemoryInputs, carry: Carry, start: int, stop: int, n: int) -> Tensor:
    """Tokens [start, stop) as chunks of n through `MlpChunkScan`; updates ``carry``."""
    B, _, H, _ = x.q.shape
    N, G = (stop - start) // n, B * H

    def chunk_major(t: Tensor) -> Tensor:
        """[B, T, H, d] -> [N, G, n, d]."""
        t = t[:, start:stop].reshape(B, N, n, H, t.shape[-1])
        return t.permute(1, 0, 3, 2, 4).reshape(N, G, n, t.shape[-1])

    log_alpha = chunk_major(x.log_alpha) if x.log_alpha is not None else None
    lr = chunk_major(x.lr)
    if log_alpha is None:
        log_alpha = torch.zeros_like(lr)
    log_beta = chunk_major(floored_log(x.momentum)) if x.momentum is not None else None
    cf = coefficients(lr, log_alpha, log_beta)
    pm = cf.pm_end.unsqueeze(-1) if cf.pm_end is not None else None

    def flat(w: Tensor) -> Tensor:
        return w.reshape(G, *w.shape[2:])

    mom = carry.momentum
    qkv = (chunk_major(x.q), chunk_major(x.k), chunk_major(x.v))
    coefs = (cf.a, cf.C[..., 0], cf.e, cf.m_end, pm)
    start_state: State = (
        flat(carry.weights[0]),
        flat(carry.weights[1]),
        flat(mom[0]) if mom is not None else None,
        flat(mom[1]) if mom is not None else None,
    )
    inputs = [t for t in (*qkv, *coefs, *start_state) if t is not None]
    st = mem.structure
    form = MlpForm(st.residual, st.act, st.norm)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        o, w1, w2, s1, s2 = MlpChunkScan.apply(form, *qkv, *coefs, *start_state)
    else:
        o, (w1, w2, s1, s2) = scan_chunks(form, *qkv, coefs, start_state)

    def unflat(w: Tensor) -> Tensor:
        return w.view(B, H, *w.shape[1:])

    carry.weights = [unflat(w1), unflat(w2)]
    if mom is not None:
        carry.momentum = [unflat(s1), unflat(s2)]
    dv = o.shape[-1]
    return o.view(N, B, H, n, dv).permute(1, 0, 3, 2, 4).reshape(B, N * n, H, dv)
