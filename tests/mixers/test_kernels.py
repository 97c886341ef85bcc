"""The fixed-kernel fast paths' building blocks, against independent computations.

- `fast_fft_size`: the smallest 2^a 3^b 5^c >= n, checked by trial division;
- `s4d_kernels` (blocked Vandermonde product) with several output vectors at once, at a
  length that is not a multiple of its block, against ``2 Re(sum_n w_n z_n^l)`` summed
  lag by lag from directly exponentiated powers;
- `s4_kernels` with two ``C~`` at once == `s4_kernel_direct` (powers of the DPLR matrix);
- the learned parametrisations' two-sided taps (`S4DParams`, `S4Params`) == the kernels
  of their two output vectors placed on either side.
"""

from __future__ import annotations

import math

import pytest
import torch
from mixer_cases import s4_params

from archdsl.mixers.cauchy import s4_kernel_direct, s4_kernels
from archdsl.mixers.filters import S4DParams, S4Params
from archdsl.mixers.toeplitz import FFT_GROUP, fast_fft_size, fft_conv
from archdsl.mixers.vandermonde import s4d_kernels

F64 = torch.float64


def _is_smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def test_fast_fft_size_is_the_next_5_smooth_number() -> None:
    for n in range(1, 2500):
        want = next(m for m in range(n, 2 * n + 2) if _is_smooth(m))
        assert fast_fft_size(n) == want, n


@pytest.mark.parametrize("grad", [False, True])  # in place into the output / concatenated
def test_fft_conv_broadcasts_batches_and_spans_channel_groups(grad: bool) -> None:
    """Per-sequence taps against one input (and the reverse), more channels than one FFT
    group: every output equals the direct causal sum over lags."""
    gen = torch.Generator().manual_seed(3)
    t, h, d = 21, 2, FFT_GROUP + 3
    x = torch.randn(1, t, h, d, generator=gen, dtype=torch.float64).requires_grad_(grad)
    taps = torch.randn(3, h, t, generator=gen, dtype=torch.float64)
    shifted = [torch.nn.functional.pad(x, (0, 0, 0, 0, lag, 0))[:, :t] for lag in range(t)]
    want = sum(taps[:, :, lag, None].unsqueeze(1) * shifted[lag] for lag in range(t))
    torch.testing.assert_close(fft_conv(x, taps, causal=True), want)
    torch.testing.assert_close(
        fft_conv(x.expand(3, -1, -1, -1), taps[:1], causal=True), want[:1].expand(3, -1, -1, -1)
    )


@pytest.mark.parametrize("grad", [False, True])
def test_fft_conv_two_sided_matches_the_sum_over_lags(grad: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    t, h, d = 19, 2, FFT_GROUP + 5
    x = torch.randn(2, t, h, d, generator=gen, dtype=torch.float64).requires_grad_(grad)
    taps = torch.randn(1, h, 2 * t - 1, generator=gen, dtype=torch.float64)  # lags -(t-1)..t-1
    want = torch.zeros(2, t, h, d, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            want[:, i] += taps[:, :, t - 1 + i - j, None] * x[:, j].detach()
    torch.testing.assert_close(fft_conv(x, taps, causal=False), want)


def test_blocked_vandermonde_kernels_match_lag_by_lag_sums() -> None:
    torch.manual_seed(0)
    h, n, t = 3, 5, 77  # 77 = 8 * 9 + 5: the last block is partial
    log_dt = torch.empty(h, dtype=F64).uniform_(math.log(0.01), math.log(0.3))
    a = torch.complex(-torch.rand(h, n, dtype=F64) - 0.1, 5 * torch.rand(h, n, dtype=F64))
    b, c1, c2 = (torch.randn(h, n, dtype=torch.complex128) for _ in range(3))
    z = torch.exp(log_dt.exp()[:, None] * a)
    b_bar = (z - 1) / a * b
    want = torch.zeros(2, h, t, dtype=F64)
    for k, c in enumerate((c1, c2)):
        for lag in range(t):
            power = torch.exp(lag * log_dt.exp()[:, None] * a)
            want[k, :, lag] = 2 * (c * b_bar * power).sum(-1).real
    torch.testing.assert_close(s4d_kernels(log_dt, a, b, [c1, c2], t), want)


def test_s4_kernels_of_two_outputs_match_direct_powers() -> None:
    torch.manual_seed(1)
    p = s4_params(True)
    args = (p["log_dt"], p["lam"], p["p"], p["b"])
    got = s4_kernels(*args, [p["ct"], p["ct_bw"]], 40, kernel_len=48)
    for k, ct in enumerate((p["ct"], p["ct_bw"])):
        torch.testing.assert_close(got[k], s4_kernel_direct(*args, ct, 40, kernel_len=48))


def test_learned_parametrisations_place_both_kernels() -> None:
    torch.manual_seed(2)
    t = 21
    s4d = S4DParams(2, 6, causal=False).double()  # 3 complex modes
    p = s4d.params(t, False)
    k_fw, k_bw = s4d_kernels(p["log_dt"], p["a"], p["b"], [p["c"], p["c_bw"]], t)
    taps = s4d.taps(t, causal=False)
    torch.testing.assert_close(
        taps[:, t - 1 :], k_fw + torch.nn.functional.pad(k_bw[:, :1], (0, t - 1))
    )
    torch.testing.assert_close(taps[:, : t - 1], k_bw[:, 1:].flip(-1))

    s4 = S4Params(2, 6, causal=False, max_len=32).double()
    q = s4.params(t, False)
    args = (q["log_dt"], q["lam"], q["p"], q["b"])
    k_fw = s4_kernel_direct(*args, q["ct"], t, 32)  # type: ignore[arg-type]
    k_bw = s4_kernel_direct(*args, q["ct_bw"], t, 32)  # type: ignore[arg-type]
    taps = s4.taps(t, causal=False)
    torch.testing.assert_close(taps[:, t:], k_fw[:, 1:])
    torch.testing.assert_close(taps[:, t - 1], k_fw[:, 0] + k_bw[:, 0])
    torch.testing.assert_close(taps[:, : t - 1], k_bw[:, 1:].flip(-1))
