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
    Channels are transformed in groups of `FFT_GROUP`: one FFT over all ``B H D`` channels
    at once streams every spectrum through memory three times and, at T = 16384, ran 2x
    slower than the same arithmetic done group by group (whose spectra stay in cache).
    Without autograd each group goes through one reused zero-padded buffer and straight
    into the output; with it the pieces are concatenated (slice assignments would each
    copy the whole gradient in the backward).
    """
    out_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, taps.dtype)
    x, taps = x.to(dtype), taps.to(dtype)
    _, length, heads, width = x.shape
    batch = max(x.shape[0], taps.shape[0])  # either may be a broadcast batch of 1
    n_fft = fast_fft_size(2 * length - 1)
    spectra = torch.fft.rfft(taps, n=n_fft)  # [B|1, H, F]
    offset = 0 if causal else length - 1  # full conv index of output i is i + (T - 1)
    group = min(width, FFT_GROUP)
    in_place = not (torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad))
    out = x.new_empty(batch, length, heads, width) if in_place else None
    padded = x.new_zeros(n_fft, group) if in_place else None
    rows = []
    for b in range(batch):
        pieces = []
        for h in range(heads):
            spectrum = spectra[min(b, spectra.shape[0] - 1), h].unsqueeze(-1)  # [F, 1]
            for d0 in range(0, width, group):
                block = x[min(b, x.shape[0] - 1), :, h, d0 : d0 + group]  # [T, g]
                if out is None or padded is None:
                    y = _convolve_block(block, spectrum, n_fft)
                    pieces.append(y[offset : offset + length])
                    continue
                padded[:length, : block.shape[1]].copy_(block)
                y = _convolve_block(padded[:, : block.shape[1]], spectrum, n_fft)
                out[b, :, h, d0 : d0 + group] = y[offset : offset + length]
        if out is None:
            rows.append(torch.cat(pieces, dim=-1).view(length, heads, width))
    return (torch.stack(rows) if out is None else out).to(out_dtype)


# Channels transformed together: 16-32 measured best at T = 4096 and 16384 (1 thread);
# fewer pay per-call overhead, all ``B H D`` at once spill the spectra out of cache.
FFT_GROUP = 16


def _convolve_block(block: Tensor, spectrum: Tensor, n_fft: int) -> Tensor:
    """``irfft(rfft(block) * spectrum)`` along time (dim 0) for a ``[T, g]`` block."""
    xf = torch.fft.rfft(block, n=n_fft, dim=0)  # [F, g] (block: [T, g] or already [n_fft, g])
    needs_grad = torch.is_grad_enabled() and (xf.requires_grad or spectrum.requires_grad)
    product = xf * spectrum if needs_grad else xf.mul_(spectrum)
    return torch.fft.irfft(product, n=n_fft, dim=0)


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
