"""Position schemes for attention: rotary (with linear / NTK / xPos scaling), ALiBi,
and learned relative embeddings (Music Transformer)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def rope_frequencies(head_dim: int, base: float, scaling: str, factor: float) -> Tensor:
    """Inverse frequencies theta_i = base^(-2i/d); NTK scaling stretches the base."""
    if scaling == "ntk" and head_dim > 2:
        base = base * factor ** (head_dim / (head_dim - 2))
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def apply_rope(
    x: Tensor, positions: Tensor, inv_freq: Tensor, scaling: str, factor: float
) -> Tensor:
    """Rotate pairs (x_{2i}, x_{2i+1}) by angle p * theta_i. x: [B, T, H, D]."""
    pos = positions.to(torch.float64)
    if scaling == "linear":
        pos = pos / factor
    angles = pos[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = angles.cos().to(x.dtype)[None, :, None, :]
    sin = angles.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def xpos_scale(
    head_dim: int, positions: Tensor, gamma: float = 0.4, scale_base: float = 512.0
) -> Tensor:
    """xPos (Sun et al. 2022): per-dimension zeta_i^(n / scale_base); q gets it, k its inverse."""
    zeta = (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim + gamma) / (1 + gamma)
    power = positions.to(torch.float64)[:, None] / scale_base
    scale = zeta[None, :] ** power  # [T, D/2]
    return scale.repeat_interleave(2, dim=-1)  # [T, D]


def alibi_slopes(heads: int) -> Tensor:
    """Press et al.: geometric slopes 2^(-8 h / H) (H a power of two; interpolated otherwise)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    closest = 2 ** math.floor(math.log2(heads))
    extra = power_of_two(2 * closest)[0::2][: heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


class RelativeEmbedding(nn.Module):
    """Learned relative-position logits q_i . E[clip(i - j)] (Shaw et al.; Huang et al.'s
    Music Transformer computes the same logits with the memory-saving "skewing" trick)."""

    def __init__(self, head_dim: int, max_distance: int = 128) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.randn(2 * max_distance + 1, head_dim) * head_dim**-0.5)

    def forward(self, q: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """q: [B, H, T, D] -> logits bias [B, H, T, S]."""
        rel = (q_pos[:, None] - k_pos[None, :]).clamp(
            -self.max_distance, self.max_distance
        ) + self.max_distance
        scores = torch.einsum("bhtd,rd->bhtr", q, self.table)  # [B, H, T, R]
        index = rel[None, None].expand(q.shape[0], q.shape[1], -1, -1)
        return torch.gather(scores, -1, index)
