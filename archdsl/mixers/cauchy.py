"""Cauchy matrix mixers.

Fixed (S4, Gu et al. 2022): a Toeplitz mixer whose kernel comes from a DPLR state matrix
``A = diag(lam) - p p^*`` (complex ``lam, p, b, ct [H, N]``, ``Re lam < 0``; step
``exp(log_dt) [H]``), bilinear discretisation, and ``ct`` = S4's ``C~ = C (I - A_bar^L)``
for kernel length ``L`` (default ``T``)::

    K_l = 2 Re( C A_bar^l B_bar ),     l = 0 .. L-1

computed the S4 way: the generating function at the L-th roots of unity
``omega_k`` by Cauchy products ``sum_n u_n v_n / d_n(omega)``, Woodbury for the rank-1
term, then an inverse FFT. We multiply numerator and denominator through by
``1 + omega`` (``d_n = (2/dt)(1 - omega) - (1 + omega) lam_n``), which keeps ``omega = -1``
(present when L is even) finite. Bidirectional: a backward kernel from ``ct_bw``
(default ``ct``) on the upper triangle, the diagonal getting both.

Data-dependent (Hydra's Cauchy mixer): ``q, k [B, T, H, N]`` and ``c`` (float or ``[H]``)::

    m_ij = sum_n 1 / (q_in - k_jn + c)

The caller keeps denominators away from 0 (e.g. ``q >= 0``, ``k <= 0``, ``c > 0``).
O(T^2 N) work is inherent to this class (there is no known fast transform for
data-dependent nodes); the fast path streams over key blocks so that it never holds
more than about 2^22 ``[i, j, n]`` entries at once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from archdsl.mixers.toeplitz import fft_conv, toeplitz_materialize
from archdsl.mixers.vandermonde import two_sided_from_kernels


def s4_kernel(
    log_dt: Tensor,
    lam: Tensor,
    p: Tensor,
    b: Tensor,
    ct: Tensor,
    length: int,
    kernel_len: int | None = None,
) -> Tensor:
    """S4 DPLR kernel ``[H, T]`` (real) via Cauchy products at roots of unity and an iFFT."""
    return s4_kernels(log_dt, lam, p, b, [ct], length, kernel_len)[0]


def s4_kernels(
    log_dt: Tensor,
    lam: Tensor,
    p: Tensor,
    b: Tensor,
    cts: list[Tensor],
    length: int,
    kernel_len: int | None = None,
) -> Tensor:
    """The S4 kernels of several ``C~`` (sharing the rest): ``[len(cts), H, T]``.

    Every Cauchy product ``sum_n u_n v_n / d_n(omega)`` shares the denominators, so they
    are inverted once and all the products are one batched complex matmul
    ``[H, 2K + 2, N] @ [H, N, L]`` (rows ``ct_k b``, ``ct_k p`` for each kernel, and
    ``p^* b``, ``p^* p`` shared by all), taken over blocks of the roots (`cauchy_sums`).
    """
    big_l = length if kernel_len is None else kernel_len
    k = torch.arange(big_l, device=lam.device, dtype=lam.real.dtype)
    omega = torch.polar(torch.ones_like(k), -2 * math.pi * k / big_l).to(lam.dtype)  # [L]
    dt = log_dt.exp().to(lam.dtype)[:, None, None]
    pc = p.conj()
    rows = [ct * v for ct in cts for v in (b, p)] + [pc * b, pc * p]
    sums = cauchy_sums(torch.stack(rows, dim=1), lam, (2.0 / dt) * (1 - omega), 1 + omega)
    k10, k11 = sums[:, -2], sums[:, -1]
    k00, k01 = sums[:, 0:-2:2].transpose(0, 1), sums[:, 1:-2:2].transpose(0, 1)  # [K, H, L]
    khat = 2.0 * (k00 - (1 + omega) * k01 * k10 / (1 + (1 + omega) * k11))
    kernel = torch.fft.ifft(khat, n=big_l)
    return 2.0 * kernel.real[..., :length]


# Denominators built and inverted per block of roots: H N CAUCHY_BLOCK complex numbers
# (~0.5 MB at H N = 256) stay in cache; the whole [H, N, L] tensor at once was ~8x slower
# at L = 16384 (each elementwise pass streamed 32 MB through memory).
CAUCHY_BLOCK_ELEMENTS = 1 << 16


def cauchy_sums(rows: Tensor, lam: Tensor, scaled_gap: Tensor, weight: Tensor) -> Tensor:
    """``rows @ (1 / (scaled_gap - weight * lam))``, i.e. ``[H, R, L]`` Cauchy products
    ``sum_n rows[h, r, n] / (scaled_gap[h, l] - weight[l] lam[h, n])``, computed over
    blocks of the L roots. ``rows [H, R, N]``, ``scaled_gap [H, 1, L]``, ``weight [L]``."""
    heads, n = lam.shape
    big_l = weight.shape[-1]
    block = max(1, CAUCHY_BLOCK_ELEMENTS // max(1, heads * n))
    col = lam.unsqueeze(-1)
    parts = []
    for l0 in range(0, big_l, block):
        l1 = min(l0 + block, big_l)
        denom = scaled_gap[..., l0:l1] - weight[l0:l1] * col  # [H, N, l]
        parts.append(rows @ denom.reciprocal())
    return torch.cat(parts, dim=-1)


def s4_kernel_direct(
    log_dt: Tensor,
    lam: Tensor,
    p: Tensor,
    b: Tensor,
    ct: Tensor,
    length: int,
    kernel_len: int | None = None,
) -> Tensor:
    """The same kernel by powers of the discretised state matrix (O(L N^2); an oracle)."""
    big_l = length if kernel_len is None else kernel_len
    n = lam.shape[-1]
    eye = torch.eye(n, dtype=lam.dtype, device=lam.device)
    a = torch.diag_embed(lam) - p.unsqueeze(-1) * p.conj().unsqueeze(-2)  # [H, N, N]
    half = (log_dt.exp().to(lam.dtype) / 2)[:, None, None]
    a_bar = torch.linalg.solve(eye - half * a, eye + half * a)
    b_bar = torch.linalg.solve(eye - half * a, (2 * half[..., 0]) * b)  # [H, N]
    a_pow_l = torch.linalg.matrix_power(a_bar, big_l)
    c = torch.linalg.solve((eye - a_pow_l).transpose(-1, -2), ct)  # C = C~ (I - A^L)^-1
    taps, state = [], b_bar
    for _ in range(length):
        taps.append((c * state).sum(-1))
        state = (a_bar @ state.unsqueeze(-1)).squeeze(-1)
    return 2.0 * torch.stack(taps, dim=-1).real


class S4Parameters(NamedTuple):
    """The fixed S4 parameters (module docstring); ``ct_bw`` None means ``ct``."""

    log_dt: Tensor
    lam: Tensor
    p: Tensor
    b: Tensor
    ct: Tensor
    ct_bw: Tensor | None


def _fixed_taps(
    length: int, s4: S4Parameters, causal: bool, kernel_len: int | None, direct: bool
) -> Tensor:
    common = (s4.log_dt, s4.lam, s4.p, s4.b)
    cts = [s4.ct] if causal else [s4.ct, s4.ct if s4.ct_bw is None else s4.ct_bw]
    if direct:
        kernels = [s4_kernel_direct(*common, ct, length, kernel_len) for ct in cts]
    else:
        kernels = list(s4_kernels(*common, cts, length, kernel_len))
    return kernels[0] if causal else two_sided_from_kernels(kernels[0], kernels[1])


def cauchy_fixed_mix(
    x: Tensor,
    *,
    log_dt: Tensor,
    lam: Tensor,
    p: Tensor,
    b: Tensor,
    ct: Tensor,
    causal: bool = True,
    ct_bw: Tensor | None = None,
    kernel_len: int | None = None,
) -> Tensor:
    """Fast path (S4 Cauchy kernel + FFT convolution) for ``x [B, T, H, D]``."""
    s4 = S4Parameters(log_dt, lam, p, b, ct, ct_bw)
    taps = _fixed_taps(x.shape[1], s4, causal, kernel_len, direct=False)
    return fft_conv(x, taps.unsqueeze(0).to(x.dtype), causal=causal)


def cauchy_fixed_materialize(
    length: int,
    *,
    log_dt: Tensor,
    lam: Tensor,
    p: Tensor,
    b: Tensor,
    ct: Tensor,
    causal: bool = True,
    ct_bw: Tensor | None = None,
    kernel_len: int | None = None,
) -> Tensor:
    """``[1, H, T, T]`` Toeplitz matrix of the kernel computed by direct powers."""
    s4 = S4Parameters(log_dt, lam, p, b, ct, ct_bw)
    taps = _fixed_taps(length, s4, causal, kernel_len, direct=True)
    return toeplitz_materialize(length, filter=taps, causal=causal)


def cauchy_data_mix(
    x: Tensor, *, q: Tensor, k: Tensor, c: float | Tensor, causal: bool = True
) -> Tensor:
    """Fast path for ``x [B, T, H, D]``: streams over key blocks, skipping masked ones."""
    batch = max(q.shape[0], k.shape[0], x.shape[0])
    length, heads, n = x.shape[1], x.shape[2], q.shape[-1]
    shift = _shift(c, q)
    block = max(1, min(length, (1 << 22) // max(1, batch * length * heads * n)))
    y = x.new_zeros(batch, length, heads, x.shape[-1])
    for j0 in range(0, length, block):
        j1 = min(j0 + block, length)
        i0 = j0 if causal else 0  # rows above the block see none of it when causal
        denom = q[:, i0:, None] - k[:, None, j0:j1] + shift  # [B, Ti, Bj, H, N]
        w = denom.reciprocal().sum(-1)
        if causal:
            rows = torch.arange(i0, length, device=x.device).unsqueeze(1)
            w = w * (rows >= torch.arange(j0, j1, device=x.device)).unsqueeze(-1)
        y[:, i0:] = y[:, i0:] + torch.einsum("bijh,bjhd->bihd", w, x[:, j0:j1])
    return y


def cauchy_data_materialize(
    length: int, *, q: Tensor, k: Tensor, c: float | Tensor, causal: bool = True
) -> Tensor:
    """The explicit ``[B, H, T, T]`` matrix, summed one channel ``n`` at a time."""
    shift = _shift(c, q)[..., 0]  # [H] or scalar
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, N]
    m = q.new_zeros(max(q.shape[0], k.shape[0]), q.shape[2], length, length)
    for n in range(q.shape[-1]):
        diff = qh[..., n].unsqueeze(-1) - kh[..., n].unsqueeze(-2)  # [B, H, T, T]
        shift_n = shift.unsqueeze(-1).unsqueeze(-1) if isinstance(shift, Tensor) else shift
        m = m + (diff + shift_n).reciprocal()
    if causal:
        m = m.tril()
    return m


def _shift(c: float | Tensor, like: Tensor) -> Tensor:
    """``c`` as a tensor that broadcasts against ``[..., H, N]``: scalar or per head."""
    t = torch.as_tensor(c, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1) if t.dim() == 1 else t.reshape(1, 1)
