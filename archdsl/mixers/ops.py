"""Small tensor helpers shared by the matrix mixers (layout ``[B, T, H, D]``).

Matrices are ``[B, H, T, T]`` with ``m[b, h, i, j]`` the weight of input token ``j`` in
output token ``i``; fixed (sequence-independent) parameters give a batch dimension of 1
that broadcasts against the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_matrix(m: Tensor, x: Tensor) -> Tensor:
    """``y_i = sum_j m_ij x_j`` per head: ``m [B|1, H, T, T]``, ``x [B, T, H, D]`` -> same as x."""
    batch = max(m.shape[0], x.shape[0])
    m = m.to(x.dtype).expand(batch, *m.shape[1:])
    return torch.einsum("bhij,bjhd->bihd", m, x.expand(batch, *x.shape[1:]))


def complex_exp(z: Tensor) -> Tensor:
    """``exp(z)`` of a complex tensor as ``e^Re(z) (cos Im z + i sin Im z)``: the same
    value, through vectorised real kernels (torch's complex ``exp`` on CPU was ~10x slower,
    most of the S4D kernel's time)."""
    return torch.polar(z.real.exp(), z.imag)


def shift_right(y: Tensor) -> Tensor:
    """Shift along time (dim 1) by one: ``out_0 = 0``, ``out_i = y_{i-1}``."""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)


def flip_time(t: Tensor) -> Tensor:
    """Reverse the time axis (dim 1)."""
    return t.flip(1)


def direction_mask(length: int, causal: bool, device: torch.device | None = None) -> Tensor:
    """Boolean ``[T, T]``: True where ``m_ij`` may be non-zero (``i >= j`` when causal)."""
    full = torch.ones(length, length, dtype=torch.bool, device=device)
    return torch.tril(full) if causal else full


def pad_time(t: Tensor, multiple: int) -> Tensor:
    """Zero-pad dim 1 (time) up to a multiple of ``multiple``."""
    rest = (-t.shape[1]) % multiple
    if rest == 0:
        return t
    pad = torch.zeros((t.shape[0], rest, *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def batch_of(*tensors: Tensor | None) -> int:
    """The largest leading (batch) dimension among the tensors that are given."""
    return max(t.shape[0] for t in tensors if t is not None)
