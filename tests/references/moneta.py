"""Moneta (Miras, Behrouz et al. 2025): l_p attentional bias, l_q retention, token loop.

Per head, memory ``M_W(x) = x + LN(W1 GELU(W2 x))`` (see `miras_block`), p = 3, q = 4:

    loss  l(W; k, v) = || M_W(k) - v ||_p^p,  dl/dM = p sign(e) |e|^(p-1)
    A_t = alpha_t A_{t-1} - eta_t grad l(W_{t'}; k_t, v_t)
    W_t = A_t / ||A_t||_q^(q-2)          (entrywise q-norm of each weight matrix)
    o_t = M_{W_t}(q_t)

with the paper's smooth surrogate ``|e| ~ sqrt(e^2 + abs_eps)`` (abs_eps = 1e-6), i.e.
``dl/dM = p e (e^2 + abs_eps)^((p-2)/2)``. Mini-batch b: gradients at the chunk-start W_{t'};
the normalisation is applied at chunk ends only; inside a chunk the memory read follows the
linear form ``W_t = alpha_t W_{t-1} - eta_t g_t`` from W_{t'} (PAPERS.md: the paper leaves
the in-chunk read open; for b = 1 this is exactly the recurrence above). A_0 = W_0 = w0.
Returns (y, (W1, W2), (A1, A2)).
"""

from __future__ import annotations

from torch import Tensor

from tests.references.miras_block import (
    Pair,
    initial_memory,
    memory_error,
    miras_features,
    miras_output,
    miras_rates,
    per_head,
    read,
    weight_grad,
)


def q_normalise(a: Tensor, q: float) -> Tensor:
    """``A / ||A||_q^(q-2)`` per batch and head over the matrix entries."""
    norm = (a.abs() ** q).sum(dim=(-2, -1), keepdim=True) ** (1.0 / q)
    return a / norm ** (q - 2.0)


def moneta(
    x: Tensor,
    w: dict[str, Tensor],
    heads: int,
    batch: int = 1,
    p: float = 3.0,
    q: float = 4.0,
    abs_eps: float = 1e-6,
) -> tuple[Tensor, Pair, Pair]:
    qs, ks, vs = miras_features(x, w, heads)
    rates = miras_rates(x, w, with_delta=False)
    mem = initial_memory(w, x.shape[0])
    acc = mem
    chunk_start = mem
    outs = []
    for t in range(x.shape[1]):
        if t % batch == 0:
            chunk_start = mem
        e = memory_error(chunk_start, ks[:, t], vs[:, t])
        dl_dy = p * e * (e * e + abs_eps) ** ((p - 2.0) / 2.0)
        g = weight_grad(chunk_start, ks[:, t], dl_dy)
        a_t, eta_t = per_head(rates["alpha"], t), per_head(rates["eta"], t)
        acc = (a_t * acc[0] - eta_t * g[0], a_t * acc[1] - eta_t * g[1])
        mem = (a_t * mem[0] - eta_t * g[0], a_t * mem[1] - eta_t * g[1])
        if (t + 1) % batch == 0:
            mem = (q_normalise(acc[0], q), q_normalise(acc[1], q))
        outs.append(read(mem, qs[:, t]))
    return miras_output(outs, x, w), mem, acc
