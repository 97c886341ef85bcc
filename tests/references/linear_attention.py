"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), as a token loop.

Causal form, eq. (16)-(20) of the paper: with a feature map phi,

    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t),
    o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t)            (``normalize=True``, the paper)
    o_t = phi(q_t)^T S_t                                (``normalize=False``)

phi = identity or ``elu(x) + 1`` (the paper's choice), on q and k only; q, k, v are plain
projections of x; ``y = o W_o^T``. Weights by MemoryLayer state_dict names: ``q_proj.weight``,
``k_proj.weight``, ``v_proj.weight``, ``o_proj.weight``. Returns (y, S_T ``[B, H, dk, dv]``),
and z_T ``[B, H, dk]`` too when ``normalize``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.references.block import heads_of, linear


def feature_map(name: str, x: Tensor) -> Tensor:
    if name == "identity":
        return x
    if name == "elu1":
        return torch.where(x > 0, x + 1.0, torch.exp(x))  # elu(x) + 1
    raise ValueError(name)


def linear_attention(
    x: Tensor,
    w: dict[str, Tensor],
    heads: int,
    phi: str = "identity",
    normalize: bool = False,
    scale: float = 1.0,
) -> tuple[Tensor, ...]:
    """x ``[B, T, d_model]`` -> (y ``[B, T, d_model]``, final S[, final z])."""
    q = feature_map(phi, heads_of(linear(x, w["q_proj.weight"]), heads)) * scale
    k = feature_map(phi, heads_of(linear(x, w["k_proj.weight"]), heads))
    v = heads_of(linear(x, w["v_proj.weight"]), heads)
    batch, length, h, dk = q.shape
    s = x.new_zeros(batch, h, dk, v.shape[-1])
    z = x.new_zeros(batch, h, dk)
    outs = []
    for t in range(length):
        s = s + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        z = z + k[:, t]
        num = torch.einsum("bhd,bhde->bhe", q[:, t], s)
        if normalize:
            num = num / (q[:, t] * z).sum(-1, keepdim=True)
        outs.append(num)
    o = torch.stack(outs, dim=1).reshape(batch, length, -1)
    y = linear(o, w["o_proj.weight"])
    return (y, s, z) if normalize else (y, s)
