"""Pieces of the matrix-mixer block: the fused input projection's layout, the short
depthwise convolution, and the gated RMSNorm.

Input projection layout (one ``Linear(d_model, sum(widths))``, segments in this order)::

    z (d_inner, when gate) | x (d_inner) | per-token mixer inputs | dt (H) | dt_bw (H)

per-token mixer inputs by class (``N`` = state; B/C shared by all heads as in Mamba2 /
Hydra with one group; q/k per head):

    semiseparable, quasiseparable:  b, c (N each); bidirectional adds b_bw, c_bw
    semiseparable, kernel selective: none (Mamba-1 computes dt, B, C from the convolved
                                    x: `archdsl.mixers.selective_params`), and no dt
    lowrank, attention, cauchy:     q, k (H * N each)
    vandermonde (data):             b, c (N each)
    fixed classes:                  none

The short conv runs over ``x`` and the per-token inputs together (Mamba2's ``xBC``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.ir.mixers import MatrixMixer

SCAN_CLASSES = frozenset({"semiseparable", "quasiseparable"})
QK_CLASSES = frozenset({"lowrank", "attention", "cauchy"})


def is_selective(mixer: MatrixMixer) -> bool:
    """Mamba's S6 (semiseparable with ``kernel = selective``): a block of its own layout."""
    return mixer.cls == "semiseparable" and mixer.kernel == "selective"


def uses_projections(mixer: MatrixMixer) -> bool:
    """Whether the mixer's parameters come from per-token projections (sequence-aligned)."""
    if mixer.cls in SCAN_CLASSES or mixer.cls in ("lowrank", "attention"):
        return True
    return mixer.cls in ("vandermonde", "cauchy") and mixer.data


def token_segments(mixer: MatrixMixer, heads: int) -> list[tuple[str, int]]:
    """The per-token mixer inputs that go through the conv, with their widths."""
    n = mixer.state
    if not uses_projections(mixer) or is_selective(mixer):
        return []
    if mixer.cls in QK_CLASSES:
        return [("q", heads * n), ("k", heads * n)]
    segments = [("b", n), ("c", n)]
    if mixer.cls in SCAN_CLASSES and mixer.direction == "bidirectional":
        segments += [("b_bw", n), ("c_bw", n)]
    return segments


def dt_segments(mixer: MatrixMixer, heads: int) -> list[tuple[str, int]]:
    """The step sizes (not convolved): one per head and direction, scan classes only."""
    if mixer.cls not in SCAN_CLASSES or is_selective(mixer):
        return []
    if mixer.direction == "bidirectional":
        return [("dt", heads), ("dt_bw", heads)]
    return [("dt", heads)]


class ShortConv(nn.Module):
    """Depthwise conv over time on ``[B, T, C]``: causal (left padding) or centred.

    Centred: ``kernel // 2`` taps of padding on the left and ``(kernel - 1) // 2`` on the
    right, so an odd kernel (Hydra: 7) is symmetric; output ``t`` sees ``t - k//2 ..``.
    """

    def __init__(self, channels: int, kernel: int, causal: bool) -> None:
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.conv1d = nn.Conv1d(channels, channels, kernel, groups=channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        pad = (k - 1, 0) if self.causal else (k // 2, (k - 1) // 2)
        h = F.pad(x.transpose(1, 2), pad)
        return self.conv1d(h).transpose(1, 2)

    def extend(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """The causal conv of ``x [B, T, C]`` after the previous ``kernel - 1`` inputs
        ``window`` (zeros at the start, as the padding): ``(out [B, T, C], next window)``; one
        token at a time, the recurrent step."""
        if not self.causal:
            raise NotImplementedError("a centred (non-causal) conv has no recurrent step")
        full = torch.cat([window.to(x.dtype), x], dim=1)
        out = self.conv1d(full.transpose(1, 2)).transpose(1, 2)
        return out, full[:, full.shape[1] - (self.kernel - 1) :]


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` over the last dim (Mamba2 / Hydra, gate first)."""

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y: Tensor, z: Tensor | None) -> Tensor:
        if z is not None:
            y = y * F.silu(z)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight
