"""Mamba's selective scan (Gu & Dao 2023, Algorithm 2), one token at a time.

Written from the paper's recurrence; shares no code with archdsl. Shapes: ``x, dt
[B, T, H, P]``, ``a [H, P, N]``, ``b, c [B, T, H, N]``, ``d [H, P]`` or None.

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t * x_t,     y_t = C_t . h_t + D x_t

`MambaBlockReference` is the whole Mamba block around it, also one token at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def selective_scan_loop(
    x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor | None = None
) -> Tensor:
    bsz, length, heads, width = x.shape
    h = x.new_zeros(bsz, heads, width, a.shape[-1])
    ys = []
    for t in range(length):
        dt_t = dt[:, t].unsqueeze(-1)  # [B, H, P, 1]
        a_bar = torch.exp(dt_t * a)
        b_t = b[:, t].unsqueeze(2)  # [B, H, 1, N]
        h = a_bar * h + dt_t * b_t * x[:, t].unsqueeze(-1)
        y = (h * c[:, t].unsqueeze(2)).sum(-1)
        if d is not None:
            y = y + d * x[:, t]
        ys.append(y)
    return torch.stack(ys, dim=1)


class MambaBlockReference(nn.Module):
    """The Mamba(-1) block (Gu & Dao 2023, Fig. 3 / Sec. 3.4), token loops only.

    Parameter names follow the paper's official implementation so weights copy by name::

        in_proj:  u -> x (d_inner) | z (d_inner)            (x first, as there)
        conv1d:   depthwise causal, kernel k: out_t = bias + sum_i w_i x_{t - k + 1 + i}
        x_proj:   x -> dt_low (R) | B (N) | C (N),   R = ceil(d_model / 16)
        dt_proj:  R -> d_inner with bias;   dt = softplus(dt_proj(dt_low))
        A = -exp(A_log) [d_inner, N];  D [d_inner]
        y = S6(silu(conv(x))) (+ D x) * silu(z);   out = out_proj(y)
    """

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank = math.ceil(d_model / 16)
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di)
        self.A_log = nn.Parameter(torch.randn(di, d_state))
        self.D = nn.Parameter(torch.randn(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        bsz, length, _ = u.shape
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        xz = u @ self.in_proj.weight.T
        x, z = xz[..., :di], xz[..., di:]
        w, bias = self.conv1d.weight[:, 0, :], self.conv1d.bias
        assert bias is not None
        a = -torch.exp(self.A_log)  # [di, N]
        h = u.new_zeros(bsz, di, n)
        ys = []
        for t in range(length):
            xc = bias.expand(bsz, di)
            for i in range(self.d_conv):
                src = t - self.d_conv + 1 + i
                if src >= 0:
                    xc = xc + w[:, i] * x[:, src]
            xc = xc * torch.sigmoid(xc)
            proj = xc @ self.x_proj.weight.T
            dt_low, b, c = proj[:, :r], proj[:, r : r + n], proj[:, r + n :]
            dt = torch.log1p(torch.exp(dt_low @ self.dt_proj.weight.T + self.dt_proj.bias))
            h = torch.exp(dt[:, :, None] * a) * h + (dt * xc)[:, :, None] * b[:, None, :]
            y = (h * c[:, None, :]).sum(-1) + self.D * xc
            ys.append(y * (z[:, t] * torch.sigmoid(z[:, t])))
        return torch.stack(ys, dim=1) @ self.out_proj.weight.T
