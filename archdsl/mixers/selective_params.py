"""Mamba-1's (S6) per-token parameters, computed from the convolved inner activations.

Given ``x [B, T, d_inner]`` (after the causal conv and SiLU), with ``R = ceil(d_model / 16)``::

    x_proj(x) -> dt_low (R) | B (N) | C (N)            (one Linear, no bias)
    dt = softplus(dt_proj(dt_low))                      (dt_proj: R -> d_inner, its bias is
                                                         Mamba's dt_bias, per channel)
    A  = -exp(A_log)   [d_inner, N]                     (S4D-real init: A[p, n] = -(n + 1))
    D  [d_inner]                                        (skip, init 1)

B and C are shared by every channel; the scan sees them broadcast to the heads. The
initialisation follows the paper: ``dt_proj.weight ~ U(-R^-1/2, R^-1/2)``, ``dt`` at init
log-uniform in ``[1e-3, 0.1]`` (the bias is its inverse softplus).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dt_rank(d_model: int) -> int:
    """Mamba's default rank of the dt projection: ``ceil(d_model / 16)``."""
    return math.ceil(d_model / 16)


class SelectiveParams(nn.Module):
    """The S6 parameter maps of one layer; ``forward`` gives the scan's keywords.

    ``forward(x [B, T, d_inner], heads) -> {dt [B, T, H, P], a [H, P, N], b, c [B, T, H, N],
    d [H, P]}`` with ``P = d_inner / heads`` (see `archdsl.mixers.selective_scan`).
    """

    def __init__(self, d_inner: int, state: int, rank: int) -> None:
        super().__init__()
        self.state, self.rank = state, rank
        self.x_proj = nn.Linear(d_inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        a = torch.arange(1, state + 1, dtype=torch.float32).expand(d_inner, state)
        self.A_log = nn.Parameter(a.log().contiguous())
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt()

    def _init_dt(self) -> None:
        with torch.no_grad():
            bound = self.rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            dt = torch.empty_like(self.dt_proj.bias).uniform_(math.log(1e-3), math.log(0.1)).exp()
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1

    def forward(self, x: Tensor, heads: int) -> dict[str, Tensor]:
        dt_low, b, c = torch.split(self.x_proj(x), [self.rank, self.state, self.state], dim=-1)
        lead = x.shape[:-1]
        dt = F.softplus(self.dt_proj(dt_low)).reshape(*lead, heads, -1)
        width = dt.shape[-1]
        shared = (*lead, heads, self.state)
        return {
            "dt": dt,
            "a": -self.A_log.exp().reshape(heads, width, self.state),
            "b": b.unsqueeze(-2).expand(shared),
            "c": c.unsqueeze(-2).expand(shared),
            "d": self.D.reshape(heads, width),
        }
