"""The plumbing around a memory, written from the papers (shared by the references).

No archdsl imports: these references are the independent side of the fidelity tests.
Weights are read from a dict whose keys are the state_dict names of archdsl's
MemoryLayer (``q_proj.weight`` ``[out, in]``, ``q_conv.weight`` ``[C, K]``, ...).
Shapes: x ``[B, T, d_model]``; per-head tensors ``[B, T, H, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

L2_EPS = 1e-6  # q / sqrt(||q||^2 + eps), the usual l2norm of the delta-rule family
OUT_NORM_EPS = 1e-6


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x W^T (+ b)``, with W ``[out, in]``."""
    y = x @ weight.T
    return y if bias is None else y + bias


def causal_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """``y[t, c] = sum_j weight[c, j] x[t - (K - 1) + j, c]``, zeros before t = 0."""
    kernel, length = weight.shape[1], x.shape[1]
    y = torch.zeros_like(x)
    for j in range(kernel):
        lag = kernel - 1 - j
        if lag < length:
            y[:, lag:] = y[:, lag:] + weight[:, j] * x[:, : length - lag]
    return y


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def l2norm(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def heads_of(x: Tensor, heads: int) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1)


def projected_feature(
    x: Tensor, w: dict[str, Tensor], name: str, heads: int, conv: bool, act: str
) -> Tensor:
    """``act(conv(x W_name))`` split into heads: the q / k / v path of the papers' blocks."""
    z = linear(x, w[f"{name}_proj.weight"])
    if conv:
        z = causal_depthwise_conv(z, w[f"{name}_conv.weight"])
    if act == "silu":
        z = silu(z)
    return heads_of(z, heads)


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + OUT_NORM_EPS) * weight


def gated_output(o: Tensor, x: Tensor, w: dict[str, Tensor], gate: str) -> Tensor:
    """``o_proj(rmsnorm_per_head(o) * gate(x W_g))``; ``gate`` is ``silu`` or ``sigmoid``."""
    o = rms_norm(o, w["o_norm.weight"])
    o = o.reshape(o.shape[0], o.shape[1], -1)
    g = linear(x, w["g_proj.weight"])
    o = o * (silu(g) if gate == "silu" else torch.sigmoid(g))
    return linear(o, w["o_proj.weight"])
