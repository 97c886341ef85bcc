"""Memora (Miras, Behrouz et al. 2025): l2 attentional bias, KL retention, token loop.

Per head, memory ``M_W(x) = x + LN(W1 GELU(W2 x))`` (see `miras_block`), l2 bias
1/2 ||M_W(k) - v||^2 (gradient through the MLP by hand), KL retention over a simplex:

    W_t = softmax(alpha_t log W_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t))

The paper leaves the softmax axis and the scale c open: here each output unit's incoming
weights form a distribution (softmax over a weight's input axis), c = 1, and the initial
weights are ``W_0 = softmax(w0)`` (MemoryLayer keeps Memora's w0 as logits). Mini-batch b
(the paper's parallel form): gradients at the chunk start W_{t'}; inside a chunk the
linear form ``W_t = alpha_t W_{t-1} - eta_t g_t`` is used and the softmax/log form once,
at the chunk's last token, on the log-space accumulator ``L_t = alpha_t L_{t-1} - eta_t g_t``
(L = log W at chunk ends). For b = 1 this is exactly the recurrence above.
Returns (y, (W1, W2)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.references.miras_block import (
    Pair,
    memory_error,
    miras_features,
    miras_output,
    miras_rates,
    per_head,
    read,
    weight_grad,
)


def _simplex(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=-2)


def memora(x: Tensor, w: dict[str, Tensor], heads: int, batch: int = 1) -> tuple[Tensor, Pair]:
    qs, ks, vs = miras_features(x, w, heads)
    rates = miras_rates(x, w, with_delta=False)
    n = x.shape[0]
    mem = (
        _simplex(w["w0_0"]).unsqueeze(0).expand(n, -1, -1, -1),
        _simplex(w["w0_1"]).unsqueeze(0).expand(n, -1, -1, -1),
    )
    logw = (torch.log(mem[0]), torch.log(mem[1]))
    chunk_start = mem
    outs = []
    for t in range(x.shape[1]):
        if t % batch == 0:
            chunk_start = mem
        e = memory_error(chunk_start, ks[:, t], vs[:, t])
        g = weight_grad(chunk_start, ks[:, t], e)
        a_t, eta_t = per_head(rates["alpha"], t), per_head(rates["eta"], t)
        logw = (a_t * logw[0] - eta_t * g[0], a_t * logw[1] - eta_t * g[1])
        mem = (a_t * mem[0] - eta_t * g[0], a_t * mem[1] - eta_t * g[1])
        if (t + 1) % batch == 0:
            mem = (_simplex(logw[0]), _simplex(logw[1]))
            logw = (torch.log(mem[0]), torch.log(mem[1]))
        outs.append(read(mem, qs[:, t]))
    return miras_output(outs, x, w), mem
