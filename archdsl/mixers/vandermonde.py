"""Vandermonde matrix mixer: ``m_ij = sum_n c_n z_n^(i-j)``-type matrices.

Two forms.

Fixed (S4D, Gu et al. 2022): parameters per head ``log_dt [H]``, and complex ``a, b, c
[H, N]`` (``Re a < 0``). With ``z = exp(dt a)`` and the ZOH input ``b_bar = (z - 1) / a * b``
the kernel is the Vandermonde product::

    K_l = 2 Re( sum_n c_n b_bar_n z_n^l ),        l = 0 .. T-1

(``2 Re``: each complex state stands for a conjugate pair), and ``m_ij = K_{i-j}`` for
``i >= j``. Bidirectional adds a second (backward) kernel from ``c_bw`` (default ``c``)
for the upper triangle: ``m_ij += K_bw_{j-i}`` for ``i <= j`` (the diagonal gets both, as
when adding a forward and a backward convolution). Fast path: the kernel (O(H N T)),
then an FFT long convolution (O(T log T)).

Data-dependent (sequence-aligned): real ``c, b [B, T, H, N]`` and fixed nodes
``z_n = exp(log_z_n)``, ``log_z [H, N] <= 0``::

    m_ij = sum_n c_in b_jn z_n^|i-j|          (i >= j when causal)

computed by the chunked scan with a decay per key channel (`chunked_ssd`): forward, plus
a reversed one when bidirectional (one scan over ``[x ; flip x]``,
`archdsl.mixers.semiseparable.scan_both_directions`), minus the diagonal counted twice.
The nodes are passed as a decay constant in time (stride 0 over T), so the scan forms
their chunk factors once and shares them between all chunks (1.25x causal, 1.85x
bidirectional at T = 4096 against per-token factors).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from archdsl.mixers.ops import complex_exp, direction_mask
from archdsl.mixers.semiseparable import ScanParams, scan_both_directions
from archdsl.mixers.ssd import DEFAULT_CHUNK, chunked_ssd
from archdsl.mixers.toeplitz import fft_conv, toeplitz_materialize


def s4d_kernel(log_dt: Tensor, a: Tensor, b: Tensor, c: Tensor, length: int) -> Tensor:
    """S4D kernel ``[H, T]`` (real) as a Vandermonde product, ZOH discretisation."""
    return s4d_kernels(log_dt, a, b, [c], length)[0]


def s4d_kernels(log_dt: Tensor, a: Tensor, b: Tensor, cs: list[Tensor], length: int) -> Tensor:
    """The S4D kernels of several output vectors ``cs`` (sharing ``a, b, dt``): ``[len(cs), H, T]``.

    ``K_l = 2 Re(sum_n w_n z_n^l)`` with ``w = c b_bar``, ``z = exp(dt a)``. Writing
    ``l = r S + s`` (``S ~ sqrt(T)``), ``z^l = z^(r S) z^s``, so the Vandermonde product is
    one batched complex matmul ``[H, R, N] @ [H, N, S]`` of two small power tables, each
    power taken as ``exp(l dt a)`` directly (no repeated products): ``O(H N sqrt(T))``
    exponentials instead of ``O(H N T)``.
    """
    dta = log_dt.exp().unsqueeze(-1) * a  # [H, N]
    b_bar = (complex_exp(dta) - 1.0) / a * b
    step = 1 << max(0, math.ceil(math.log2(max(1, length)) / 2))
    rows = -(-length // step)
    real = a.real.dtype
    low = complex_exp(dta.unsqueeze(-1) * torch.arange(step, device=a.device, dtype=real))
    high_lags = torch.arange(rows, device=a.device, dtype=real) * step
    high = complex_exp(dta.unsqueeze(-2) * high_lags.unsqueeze(-1))  # [H, R, N]
    w = torch.stack([c * b_bar for c in cs])  # [K, H, N]
    weighted = w.unsqueeze(-2) * high  # [K, H, R, N]
    table = weighted @ low  # [K, H, R, S]: lag r S + s
    kernel = table.reshape(*table.shape[:-2], rows * step)[..., :length]
    return 2.0 * kernel.real


def two_sided_from_kernels(k_fw: Tensor, k_bw: Tensor) -> Tensor:
    """Centred two-sided taps ``[.., 2T-1]``: backward kernel on negative lags, sum at 0."""
    centre = k_fw[..., :1] + k_bw[..., :1]
    return torch.cat([k_bw[..., 1:].flip(-1), centre, k_fw[..., 1:]], dim=-1)


def _fixed_taps(
    length: int, log_dt: Tensor, a: Tensor, b: Tensor, c: Tensor, causal: bool, c_bw: Tensor | None
) -> Tensor:
    if causal:
        return s4d_kernel(log_dt, a, b, c, length)
    k_fw, k_bw = s4d_kernels(log_dt, a, b, [c, c if c_bw is None else c_bw], length)
    return two_sided_from_kernels(k_fw, k_bw)


def vandermonde_fixed_mix(
    x: Tensor,
    *,
    log_dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    causal: bool = True,
    c_bw: Tensor | None = None,
) -> Tensor:
    """Fast path (S4D kernel + FFT convolution) for ``x [B, T, H, D]``."""
    taps = _fixed_taps(x.shape[1], log_dt, a, b, c, causal, c_bw)
    return fft_conv(x, taps.unsqueeze(0).to(x.dtype), causal=causal)


def vandermonde_fixed_materialize(
    length: int,
    *,
    log_dt: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    causal: bool = True,
    c_bw: Tensor | None = None,
) -> Tensor:
    """The explicit ``[1, H, T, T]`` Toeplitz matrix of the S4D kernel(s)."""
    taps = _fixed_taps(length, log_dt, a, b, c, causal, c_bw)
    return toeplitz_materialize(length, filter=taps, causal=causal)


def vandermonde_data_mix(
    x: Tensor,
    *,
    c: Tensor,
    b: Tensor,
    log_z: Tensor,
    causal: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Fast path (the per-channel-decay chunked scan) for ``x [B, T, H, D]``."""
    decay = log_z.to(x.dtype).expand(1, x.shape[1], *log_z.shape)
    if causal:
        return chunked_ssd(c, b, x, log_decay=decay, chunk_size=chunk_size)[0]
    both = ScanParams(c, b, decay, None)
    minus_diagonal = -(c * b).sum(-1, keepdim=True) * x  # counted by both directions
    return scan_both_directions(
        x, both, both, shift=False, base=minus_diagonal, chunk_size=chunk_size
    )


def vandermonde_data_materialize(
    length: int, *, c: Tensor, b: Tensor, log_z: Tensor, causal: bool = True
) -> Tensor:
    """The explicit ``[B, H, T, T]`` matrix, one state channel ``n`` at a time."""
    idx = torch.arange(length, device=c.device)
    lag = (idx.unsqueeze(1) - idx.unsqueeze(0)).to(c.dtype)
    keep = direction_mask(length, causal, c.device)
    m = c.new_zeros(max(c.shape[0], b.shape[0]), c.shape[2], length, length)
    for n in range(c.shape[-1]):
        power = (lag.abs() * log_z[:, n, None, None]).exp()  # [H, T, T]
        cb = c[..., n].transpose(1, 2).unsqueeze(-1) * b[..., n].transpose(1, 2).unsqueeze(-2)
        m = m + cb * power
    return m * keep
