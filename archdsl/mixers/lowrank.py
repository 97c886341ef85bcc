"""Low-rank matrix mixer: ``m_ij = scale * q_i . k_j`` (linear attention, unnormalised).

Parameters: ``q, k [B, T, H, N]`` (a batch dim of 1 for fixed ones), ``scale`` a float.
Causal keeps ``i >= j``: that is linear attention, computed by the same chunked scan as
the scalar-decay memories and the semiseparable mixer (`archdsl.mixers.ssd.chunked_ssd`
with no decay). Bidirectional is two matmuls, ``q (k^T x)``, O(T N D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.mixers.ops import direction_mask
from archdsl.mixers.ssd import DEFAULT_CHUNK, chunked_ssd


def lowrank_mix(
    x: Tensor,
    *,
    q: Tensor,
    k: Tensor,
    scale: float = 1.0,
    causal: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Fast path for ``x [B, T, H, D]``."""
    if causal:
        return chunked_ssd(q, k, x, scale=scale, chunk_size=chunk_size)[0]
    summary = torch.einsum("bjhn,bjhd->bhnd", k, x)  # k^T x: [B, H, N, D]
    return torch.einsum("bihn,bhnd->bihd", q * scale, summary)


def lowrank_materialize(
    length: int, *, q: Tensor, k: Tensor, scale: float = 1.0, causal: bool = True
) -> Tensor:
    """The explicit ``[B, H, T, T]`` matrix."""
    m = torch.einsum("bihn,bjhn->bhij", q * scale, k)
    return m * direction_mask(length, causal, m.device)
