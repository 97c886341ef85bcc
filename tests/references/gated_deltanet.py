"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), as a token loop.

Per head, with state S ``[dk, dv]`` read as ``o = S^T q``:

    S'  = alpha_t S_{t-1}                               (gate first: forget)
    S_t = S' - beta_t k_t (S'^T k_t - v_t)^T            (then one delta-rule step)
        = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (q_t / sqrt(dk))

The delta step is gradient descent on 1/2 ||S^T k - v||^2, whose gradient k e^T is written
out here. Block (the paper's Figure / official layer): q, k, v = SiLU(short causal conv
(x W)), q and k l2-normalised; alpha_t = exp(-exp(A_log) softplus(x W_a + dt_bias)) per
head (Mamba2's parametrisation); beta_t = sigmoid(x W_b + b_b) per head; output
RMSNorm per head, gated by SiLU(x W_g), then W_o.

Weights (MemoryLayer names): ``{q,k,v}_proj.weight``, ``{q,k,v}_conv.weight``,
``alpha_proj.weight``, ``alpha_A_log``, ``alpha_dt_bias``, ``lr_proj.weight``,
``lr_proj.bias``, ``o_norm.weight``, ``g_proj.weight``, ``o_proj.weight``.
Returns (y, S_T ``[B, H, dk, dv]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.references.block import gated_output, l2norm, linear, projected_feature


def gated_deltanet(x: Tensor, w: dict[str, Tensor], heads: int) -> tuple[Tensor, Tensor]:
    """x ``[B, T, d_model]`` -> (y ``[B, T, d_model]``, final S)."""
    q = l2norm(projected_feature(x, w, "q", heads, conv=True, act="silu"))
    k = l2norm(projected_feature(x, w, "k", heads, conv=True, act="silu"))
    v = projected_feature(x, w, "v", heads, conv=True, act="silu")
    dt = F.softplus(linear(x, w["alpha_proj.weight"]) + w["alpha_dt_bias"])
    alpha = torch.exp(-torch.exp(w["alpha_A_log"]) * dt)  # [B, T, H]
    beta = torch.sigmoid(linear(x, w["lr_proj.weight"], w["lr_proj.bias"]))
    batch, length, h, dk = q.shape
    scale = dk**-0.5
    s = x.new_zeros(batch, h, dk, v.shape[-1])
    outs = []
    for t in range(length):
        k_t, v_t = k[:, t], v[:, t]
        s = alpha[:, t, :, None, None] * s
        err = torch.einsum("bhde,bhd->bhe", s, k_t) - v_t
        s = s - beta[:, t, :, None, None] * k_t.unsqueeze(-1) * err.unsqueeze(-2)
        outs.append(torch.einsum("bhde,bhd->bhe", s, q[:, t] * scale))
    o = torch.stack(outs, dim=1)
    return gated_output(o, x, w, gate="silu"), s
