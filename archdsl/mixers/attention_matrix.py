"""Attention as a matrix mixer: ``m_ij = softmax_j(scale * q_i . k_j)`` (over ``j <= i`` if causal).

Parameters: ``q, k [B, T, H, N]`` (a batch dim of 1 for fixed ones), ``scale`` (None:
``N ** -0.5``). The fast path is torch's ``scaled_dot_product_attention`` (flash /
memory-efficient kernels where available); it never builds the ``T x T`` matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archdsl.mixers.ops import direction_mask


def attention_mix(
    x: Tensor, *, q: Tensor, k: Tensor, scale: float | None = None, causal: bool = True
) -> Tensor:
    """Fast path for ``x [B, T, H, D]``."""
    batch = max(q.shape[0], k.shape[0], x.shape[0])
    qh, kh, vh = (t.expand(batch, *t.shape[1:]).transpose(1, 2) for t in (q, k, x))
    y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)
    return y.transpose(1, 2)


def attention_materialize(
    length: int, *, q: Tensor, k: Tensor, scale: float | None = None, causal: bool = True
) -> Tensor:
    """The explicit ``[B, H, T, T]`` row-stochastic matrix."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bihn,bjhn->bhij", q, k) * s
    keep = direction_mask(length, causal, logits.device)
    return logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
