"""A 2-layer MLP memory and its weight gradient, derived by hand (no autograd inside).

``M(x) = [x +] norm(act(x W1) W2)`` per batch and head, W1 ``[B, H, d_in, hidden]``,
W2 ``[B, H, hidden, d_out]``, x ``[B, H, d_in]``. ``norm`` is a LayerNorm without affine
(Miras: ``M(x) = x + LN(W1 sigma(W2 x))`` -- in the papers' notation the matrix applied
first is written last) or none (Titans). The backward below is the chain rule written out;
the outer autograd still differentiates through it (it is made of plain torch ops).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN_EPS = 1e-5


def act_fn(name: str, h: Tensor) -> Tensor:
    if name == "gelu":  # exact (erf) GELU
        return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    if name == "silu":
        return h * torch.sigmoid(h)
    raise ValueError(name)


def act_grad(name: str, h: Tensor) -> Tensor:
    if name == "gelu":  # Phi(h) + h phi(h)
        cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
        return cdf + h * torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    if name == "silu":  # s + h s (1 - s)
        s = torch.sigmoid(h)
        return s + h * s * (1.0 - s)
    raise ValueError(name)


def _mv(x: Tensor, w: Tensor) -> Tensor:
    """Row vector times matrix per batch and head: ``[B, H, n] x [B, H, n, m] -> [B, H, m]``."""
    return torch.einsum("bhn,bhnm->bhm", x, w)


def _layer_norm(f: Tensor) -> tuple[Tensor, Tensor]:
    centred = f - f.mean(-1, keepdim=True)
    inv_std = 1.0 / torch.sqrt((centred * centred).mean(-1, keepdim=True) + LN_EPS)
    return centred * inv_std, inv_std


def mlp_forward(
    weights: tuple[Tensor, Tensor], x: Tensor, act: str, residual: bool, layer_norm: bool
) -> Tensor:
    """``M(x)`` for x ``[B, H, d_in]``."""
    f = _mv(act_fn(act, _mv(x, weights[0])), weights[1])
    if layer_norm:
        f = _layer_norm(f)[0]
    return x + f if residual else f


def mlp_weight_grad(
    weights: tuple[Tensor, Tensor],
    x: Tensor,
    dl_dy: Tensor,
    act: str,
    layer_norm: bool,
) -> tuple[Tensor, Tensor]:
    """(dl/dW1, dl/dW2) given dl/dy at y = M(x); the residual path carries no weights."""
    w1, w2 = weights
    h = _mv(x, w1)
    a = act_fn(act, h)
    df = dl_dy
    if layer_norm:
        # y = (f - mean f) / std:  df = inv_std (dy - mean(dy) - y mean(dy * y))
        n, inv_std = _layer_norm(_mv(a, w2))
        df = inv_std * (
            dl_dy - dl_dy.mean(-1, keepdim=True) - n * (dl_dy * n).mean(-1, keepdim=True)
        )
    grad_w2 = a.unsqueeze(-1) * df.unsqueeze(-2)
    dh = torch.einsum("bhm,bhnm->bhn", df, w2) * act_grad(act, h)
    grad_w1 = x.unsqueeze(-1) * dh.unsqueeze(-2)
    return grad_w1, grad_w2
