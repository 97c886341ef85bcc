"""Toeplitz matrix mixer: ``m_ij = h_{i-j}`` per head, applied as an FFT long convolution.

Parameters: ``filter`` with a leading batch dim (``[B, H, L]``: data-dependent, one
filter per sequence) or without (``[H, L]``: fixed):

- causal: taps for lags ``0 .. L-1`` (``L >= 1``; taps past ``T - 1`` are unused, missing
  ones are zero): ``m_ij = filter[..., i - j]`` for ``i >= j``;
- bidirectional: a two-sided filter of odd length ``2L - 1`` centred at index ``L - 1``:
  ``m_ij = filter[..., L - 1 + i - j]`` (lags beyond ``+-(L-1)`` are zero).

The fast path multiplies real FFTs of a length ``n >= 2T - 1``: O(T log T) per channel,
the ``T x T`` matrix is never built. ``n >= 2T - 1`` suffices for the two-sided filter too:
the outputs kept, full-convolution indices ``T-1 .. 2T-2`` of ``0 .. 3T-3``, receive no
wrapped-around terms. ``n`` is the next size with only the factors 2, 3 and 5, where the
FFT is fastest (a length with a large prime factor, e.g. ``3T - 2 = 12286``, was 2-3x slower).
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_taps(filt: Tensor, length: int) -> Tensor:
    """Lags ``0 .. T-1`` of a causal filter ``[..., L]``, zero-padded or truncated."""
    if filt.shape[-1] >= length:
        return filt[..., :length]
    return torch.nn.functional.pad(filt, (0, length - filt.shape[-1]))


def two_sided_taps(filt: Tensor, length: int) -> Tensor:
    """Lags ``-(T-1) .. T-1`` (``[..., 2T-1]``) of a centred odd-length filter."""
    if filt.shape[-1] % 2 != 1:
        raise ValueError(f"two-sided toeplitz filter must have odd length, got {filt.shape[-1]}")
    half = (filt.shape[-1] - 1) // 2  # max lag of the filter
    if half >= length - 1:
        return filt[..., half - (length - 1) : half + length]
    pad = length - 1 - half
    return torch.nn.functional.pad(filt, (pad, pad))


def fast_fft_size(n: int) -> int:
    """The smallest ``m >= n`` of the form ``2^a 3^b 5^c``."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            m = power35
            while m < n:
                m *= 2
            best = min(best, m)
            power35 *= 3
        power5 *= 5
    return best


def fft_conv(x: Tensor, taps: Tensor, *, causal: bool) -> Tensor:
    """Long convolution of ``x [B, T, H, D]`` with per-head taps ``[B|1, H, K]``.

    ``causal``: ``taps`` are lags ``0..T-1``; else lags ``-(T-1)..T-1`` (``K = 2T - 1``).
    """
    length = x.shape[1]
    n_fft = fast_fft_size(2 * length - 1)
    # a contiguous time axis is ~15% faster through pocketfft than a strided one
    xf = torch.fft.rfft(x.permute(0, 2, 3, 1).contiguous(), n=n_fft)  # [B, H, D, F]
    hf = torch.fft.rfft(taps, n=n_fft).unsqueeze(-2)  # [B|1, H, 1, F]
    needs_grad = torch.is_grad_enabled() and (xf.requires_grad or hf.requires_grad)
    product = (
        xf * hf
        if needs_grad or xf.shape != torch.broadcast_shapes(xf.shape, hf.shape)
        else xf.mul_(hf)
    )
    y = torch.fft.irfft(product, n=n_fft)
    offset = 0 if causal else length - 1  # full conv index of output i is i + (T - 1)
    return y[..., offset : offset + length].permute(0, 3, 1, 2).to(x.dtype)


def toeplitz_mix(x: Tensor, *, filter: Tensor, causal: bool = True) -> Tensor:
    """Fast path for ``x [B, T, H, D]`` (FFT convolution)."""
    taps = _batched(filter)
    length = x.shape[1]
    taps = causal_taps(taps, length) if causal else two_sided_taps(taps, length)
    return fft_conv(x, taps, causal=causal)


def toeplitz_materialize(length: int, *, filter: Tensor, causal: bool = True) -> Tensor:
    """The explicit ``[B|1, H, T, T]`` matrix, gathered entry by entry from the lags."""
    taps = _batched(filter)
    idx = torch.arange(length, device=taps.device)
    lag = idx.unsqueeze(1) - idx.unsqueeze(0)  # i - j
    if causal:
        full = causal_taps(taps, length)[..., lag.clamp(min=0)]
        return full * (lag >= 0)
    return two_sided_taps(taps, length)[..., lag + length - 1]


def _batched(filt: Tensor) -> Tensor:
    return filt.unsqueeze(0) if filt.dim() == 2 else filt
