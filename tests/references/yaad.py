"""Yaad (Miras, Behrouz et al. 2025): Huber attentional bias, decay retention, token loop.

Per head, memory ``M_W(x) = x + LN(W1 GELU(W2 x))`` (see `miras_block`), e = M_W(k) - v:

    step_t = eta_t grad 1/2||e||^2            if ||e|| <= delta_t
             eta_t delta_t grad ||e||_1       otherwise
    W_t    = alpha_t W_{t-1} - step_t          (Titans-style decay: gradient at W_{t-1})

with the paper's smooth surrogate ``|e| ~ sqrt(e^2 + abs_eps)`` in the l1 branch, so
``dl1/dM = e / sqrt(e^2 + abs_eps)``. Mini-batch b: gradients at the chunk start W_{t'}.
Read ``o_t = M_{W_t}(q_t)``. Returns (y, (W1, W2)).
"""

from __future__ import annotations

import torch
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


def yaad(
    x: Tensor, w: dict[str, Tensor], heads: int, batch: int = 1, abs_eps: float = 1e-6
) -> tuple[Tensor, Pair]:
    qs, ks, vs = miras_features(x, w, heads)
    rates = miras_rates(x, w, with_delta=True)
    mem = initial_memory(w, x.shape[0])
    chunk_start = mem
    outs = []
    for t in range(x.shape[1]):
        if t % batch == 0:
            chunk_start = mem
        e = memory_error(chunk_start, ks[:, t], vs[:, t])
        delta = rates["delta"][:, t].unsqueeze(-1)  # [B, H, 1]
        inside = torch.sqrt((e * e).sum(-1, keepdim=True)) <= delta
        dl_dy = torch.where(inside, e, delta * e / torch.sqrt(e * e + abs_eps))
        g = weight_grad(chunk_start, ks[:, t], dl_dy)
        a_t, eta_t = per_head(rates["alpha"], t), per_head(rates["eta"], t)
        mem = (a_t * mem[0] - eta_t * g[0], a_t * mem[1] - eta_t * g[1])
        outs.append(read(mem, qs[:, t]))
    return miras_output(outs, x, w), mem
