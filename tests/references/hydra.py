"""Hydra block (Hwang et al. 2024), written from the paper with plain token loops.

Shares no code with archdsl. The parameter names and the fused-projection layout follow
the paper's official implementation, so that weights can be copied by name:

    in_proj: u -> z (d_inner) | x (d_inner) | B_fw, C_fw, B_bw, C_bw (N each) | dt (2H)
    conv1d:  depthwise, kernel k, centred (input t + i - k//2 for tap i), then SiLU,
             over x and the four B / C blocks
    dt_fw = softplus(dt[:H] + dt_bias[:H]),  dt_bw = softplus(dt[H:] + dt_bias[H:])
    A = -exp(A_log) (one per head, both directions)
    forward SSM   h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t
    backward SSM  the same from the last token to the first, with the _bw parameters
    shift:        y_fw[t] = forward[t-1] (0 at t = 0); y_bw[t] = backward[t+1] (0 at T-1)
    y = y_fw + y_bw + x * (fc_D(x) + D)          (data-dependent diagonal, per head)
    out = out_proj( rmsnorm(y * silu(z)) * norm.weight )
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HydraReference(nn.Module):
    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, headdim: int):
        super().__init__()
        self.d_inner = expand * d_model
        self.nheads = self.d_inner // headdim
        self.headdim, self.d_state, self.d_conv = headdim, d_state, d_conv
        conv_dim = self.d_inner + 4 * d_state
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner + 4 * d_state + 2 * self.nheads, bias=False
        )
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim)
        self.dt_bias = nn.Parameter(torch.zeros(2 * self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False)
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        bsz, length, _ = u.shape
        di, n, h, p = self.d_inner, self.d_state, self.nheads, self.headdim
        proj = u @ self.in_proj.weight.T
        z, xbc, dt = proj[..., :di], proj[..., di : 2 * di + 4 * n], proj[..., 2 * di + 4 * n :]
        xbc = self._conv_silu(xbc)
        x = xbc[..., :di]
        b_fw, c_fw = xbc[..., di : di + n], xbc[..., di + n : di + 2 * n]
        b_bw, c_bw = xbc[..., di + 2 * n : di + 3 * n], xbc[..., di + 3 * n :]
        dt_fw = nn.functional.softplus(dt[..., :h] + self.dt_bias[:h])
        dt_bw = nn.functional.softplus(dt[..., h:] + self.dt_bias[h:])
        a = -torch.exp(self.A_log)
        xh = x.reshape(bsz, length, h, p)

        fwd = self._scan(xh, dt_fw, a, b_fw, c_fw, range(length))
        bwd = self._scan(xh, dt_bw, a, b_bw, c_bw, range(length - 1, -1, -1))
        y = torch.zeros_like(xh)
        for t in range(length):
            if t > 0:
                y[:, t] = y[:, t] + fwd[t - 1]
            if t < length - 1:
                y[:, t] = y[:, t] + bwd[t + 1]
        diag = x @ self.fc_D.weight.T + self.D  # [B, T, H]
        y = y + xh * diag.unsqueeze(-1)
        g = y.reshape(bsz, length, di) * nn.functional.silu(z)
        g = g / torch.sqrt((g * g).mean(-1, keepdim=True) + 1e-5) * self.norm_weight
        return g @ self.out_proj.weight.T

    def _conv_silu(self, xbc: Tensor) -> Tensor:
        length, k = xbc.shape[1], self.d_conv
        w, bias = self.conv1d.weight[:, 0, :], self.conv1d.bias
        assert bias is not None
        out = torch.zeros_like(xbc)
        for t in range(length):
            acc = bias.expand_as(xbc[:, t])
            for i in range(k):
                src = t + i - k // 2
                if 0 <= src < length:
                    acc = acc + w[:, i] * xbc[:, src]
            out[:, t] = acc
        return out * torch.sigmoid(out)

    def _scan(self, x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, order: range):
        """Outputs y_t = C_t . h_t of one direction, keyed by t (h [B, H, P, N])."""
        bsz = x.shape[0]
        state = x.new_zeros(bsz, self.nheads, self.headdim, self.d_state)
        outs: dict[int, Tensor] = {}
        for t in order:
            decay = torch.exp(dt[:, t] * a)[:, :, None, None]
            write = (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * b[:, t, None, None, :]
            state = decay * state + write
            outs[t] = (state * c[:, t, None, None, :]).sum(-1)
        return outs


def init_like_paper(ref: HydraReference) -> None:
    """Random non-trivial weights (A in [1, 16], dt in [1e-3, 0.1], random fc_D / D)."""
    with torch.no_grad():
        ref.A_log.copy_(torch.empty_like(ref.A_log).uniform_(1, 16).log())
        dt = torch.exp(torch.empty_like(ref.dt_bias).uniform_(math.log(1e-3), math.log(0.1)))
        ref.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        ref.D.copy_(torch.randn_like(ref.D))
        ref.norm_weight.copy_(1 + 0.1 * torch.randn_like(ref.norm_weight))
