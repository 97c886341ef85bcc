"""Dense matrix mixer: ``m_ij = W[h, i, j]``, a free ``[max_len, max_len]`` matrix per head.

Parameters: ``weight [H, L, L]`` (fixed, learned) or ``[B, H, L, L]`` (one matrix per
sequence, e.g. produced by another network) with ``L >= T``; the leading ``T x T`` block
is used. Causal keeps the lower triangle. Not sequence-aligned: fixed length ``max_len``.
The fast path is the matmul itself, so fast and materialised costs are the same.
"""

from __future__ import annotations

from torch import Tensor

from archdsl.mixers.ops import apply_matrix, direction_mask


def dense_materialize(length: int, *, weight: Tensor, causal: bool = True) -> Tensor:
    """``[B|1, H, T, T]``: the leading block of ``weight``, masked when causal."""
    if weight.shape[-1] < length:
        raise ValueError(
            f"dense mixer: sequence length {length} exceeds max_len {weight.shape[-1]}; "
            "set max_len >= the longest sequence"
        )
    m = weight[..., :length, :length]
    if m.dim() == 3:
        m = m.unsqueeze(0)
    return m * direction_mask(length, causal, m.device)


def dense_mix(x: Tensor, *, weight: Tensor, causal: bool = True) -> Tensor:
    """Fast path for ``x [B, T, H, D]``: one batched matmul."""
    return apply_matrix(dense_materialize(x.shape[1], weight=weight, causal=causal), x)
