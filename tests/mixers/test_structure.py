"""Each structured matrix against its definition, entry by entry, and kernels vs powers.

- quasiseparable: diagonal, strictly lower and strictly upper parts of the materialised
  matrix each equal their Hydra definitions, written here as plain loops;
- S4D (Vandermonde) and S4 (DPLR / Cauchy) kernels equal ``2 Re(C A_bar^l B_bar)`` from
  explicit powers of the discretised state matrix, built here independently;
- Mamba's selective scan equals the token loop of `tests/references/mamba_scan.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mixer_cases import s4_params

from archdsl.mixers.cauchy import s4_kernel, s4_kernel_direct
from archdsl.mixers.quasiseparable import quasiseparable_materialize
from archdsl.mixers.selective_scan import selective_scan, selective_scan_materialize
from archdsl.mixers.vandermonde import s4d_kernel
from tests.references.mamba_scan import selective_scan_loop

F64 = torch.float64


def _scan_params(t: int, h: int, n: int) -> dict[str, torch.Tensor]:
    p: dict[str, torch.Tensor] = {}
    for sfx in ("", "_bw"):
        p["c" + sfx] = torch.randn(1, t, h, n, dtype=F64)
        p["b" + sfx] = torch.randn(1, t, h, n, dtype=F64)
        p["log_a" + sfx] = -F.softplus(torch.randn(1, t, h, dtype=F64))
        p["lr" + sfx] = F.softplus(torch.randn(1, t, h, dtype=F64))
    return p


def test_quasiseparable_parts_match_their_definitions() -> None:
    torch.manual_seed(0)
    t, h, n = 11, 2, 3
    p = _scan_params(t, h, n)
    delta = torch.randn(1, t, h, dtype=F64)
    m = quasiseparable_materialize(t, causal=False, delta=delta, **p)[0]
    c, b, la, lr = p["c"][0], p["b"][0], p["log_a"][0], p["lr"][0]
    cb, bb, lab, lrb = p["c_bw"][0], p["b_bw"][0], p["log_a_bw"][0], p["lr_bw"][0]
    for hh in range(h):
        for i in range(t):
            assert math.isclose(m[hh, i, i], delta[0, i, hh], rel_tol=1e-12)
            for j in range(i):  # strictly lower: c_{i-1} . b_j lr_j prod_{s=j+1}^{i-1} a_s
                decay = math.exp(sum(la[s, hh].item() for s in range(j + 1, i)))
                want = (c[i - 1, hh] @ b[j, hh]).item() * lr[j, hh].item() * decay
                assert math.isclose(m[hh, i, j].item(), want, rel_tol=1e-10, abs_tol=1e-12)
            for j in range(i + 1, t):  # strictly upper: reversed, c_bw_{i+1}, a_bw on (i, j)
                decay = math.exp(sum(lab[s, hh].item() for s in range(i + 1, j)))
                want = (cb[i + 1, hh] @ bb[j, hh]).item() * lrb[j, hh].item() * decay
                assert math.isclose(m[hh, i, j].item(), want, rel_tol=1e-10, abs_tol=1e-12)
    causal = quasiseparable_materialize(t, causal=True, delta=delta, **p)[0]
    torch.testing.assert_close(causal, m.tril())


def _powers_kernel(a_bar: torch.Tensor, b_bar: torch.Tensor, c: torch.Tensor, t: int):
    """2 Re(C A_bar^l B_bar) for l < t by repeated multiplication (per head)."""
    out = torch.zeros(a_bar.shape[0], t, dtype=F64)
    for hh in range(a_bar.shape[0]):
        power = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype)
        for lag in range(t):
            out[hh, lag] = 2 * (c[hh] @ power @ b_bar[hh]).real
            power = a_bar[hh] @ power
    return out


def test_s4d_kernel_matches_powers_of_the_diagonal_state_matrix() -> None:
    torch.manual_seed(1)
    h, n, t = 3, 5, 45
    log_dt = torch.empty(h, dtype=F64).uniform_(math.log(0.01), math.log(0.3))
    a = torch.complex(-torch.rand(h, n, dtype=F64) - 0.1, 3 * torch.rand(h, n, dtype=F64))
    b, c = (torch.randn(h, n, dtype=torch.complex128) for _ in range(2))
    dt = log_dt.exp()[:, None]
    a_bar = torch.diag_embed(torch.exp(dt * a))  # ZOH: exp(dt A), A diagonal
    b_bar = (torch.exp(dt * a) - 1) / a * b  # ZOH: A^-1 (exp(dt A) - I) B
    want = _powers_kernel(a_bar, b_bar, c, t)
    torch.testing.assert_close(s4d_kernel(log_dt, a, b, c, t), want)


def test_s4_cauchy_kernel_matches_powers_of_the_dplr_state_matrix() -> None:
    torch.manual_seed(2)
    t = 50  # even: the roots of unity include -1
    p = s4_params(False)
    h, n = p["lam"].shape
    big_a = torch.diag_embed(p["lam"]) - torch.einsum("hn,hm->hnm", p["p"], p["p"].conj())
    dt = p["log_dt"].exp().to(torch.complex128)[:, None, None]
    eye = torch.eye(n, dtype=torch.complex128)
    back = torch.linalg.inv(eye - dt / 2 * big_a)  # bilinear discretisation
    a_bar = back @ (eye + dt / 2 * big_a)
    b_bar = (back @ (dt * p["b"].unsqueeze(-1))).squeeze(-1)
    c_true = torch.randn(h, n, dtype=torch.complex128)
    a_pow = torch.linalg.matrix_power(a_bar, t)
    ct = (c_true.unsqueeze(-2) @ (eye - a_pow)).squeeze(-2)  # S4's C~ = C (I - A^L)
    want = _powers_kernel(a_bar, b_bar, c_true, t)
    args = (p["log_dt"], p["lam"], p["p"], p["b"], ct, t)
    torch.testing.assert_close(s4_kernel(*args), want)
    torch.testing.assert_close(s4_kernel_direct(*args), want)
    # a kernel length L > T: the first T taps of the length-L kernel
    ct_long = (c_true.unsqueeze(-2) @ (eye - torch.linalg.matrix_power(a_bar, 64))).squeeze(-2)
    got = s4_kernel(p["log_dt"], p["lam"], p["p"], p["b"], ct_long, t, kernel_len=64)
    torch.testing.assert_close(got, want)


def test_selective_scan_matches_token_loop_outputs_and_gradients() -> None:
    torch.manual_seed(3)
    bsz, t, h, width, n = 2, 37, 2, 3, 4
    x = torch.randn(bsz, t, h, width, dtype=F64, requires_grad=True)
    dt = F.softplus(torch.randn(bsz, t, h, width, dtype=F64)).requires_grad_(True)
    a = (-torch.rand(h, width, n, dtype=F64) * 2 - 0.05).requires_grad_(True)
    b = torch.randn(bsz, t, h, n, dtype=F64, requires_grad=True)
    c = torch.randn(bsz, t, h, n, dtype=F64, requires_grad=True)
    d = torch.randn(h, width, dtype=F64, requires_grad=True)
    leaves = [x, dt, a, b, c, d]
    fast = selective_scan(x, dt=dt, a=a, b=b, c=c, d=d, chunk_size=16)
    ref = selective_scan_loop(x, dt, a, b, c, d)
    torch.testing.assert_close(fast, ref)
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), leaves)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr)
    m = selective_scan_materialize(t, dt=dt, a=a, b=b, c=c)  # [B, H, P, T, T]
    via_matrix = torch.einsum("bhpij,bjhp->bihp", m, x) + x * d
    torch.testing.assert_close(via_matrix, ref)
