"""Learned parametrisations of fixed (sequence-independent) mixer parameters.

Each module makes the class parameters of one fixed form for a given length:

- `ExplicitFilter`: free Toeplitz taps ``[H, max_len]`` (two-sided ``[H, 2 max_len - 1]``);
- `ImplicitFilter`: Hyena's filter, a small MLP (sine activations) over positional
  features, times an exponential decay window ``exp(-rate_h |l|)``; any length;
- `S4DParams`: S4D-Lin init (``a_n = -1/2 + i pi n``), the Vandermonde class's params;
- `S4Params`: S4's DPLR (``lam = -1/2 + i pi n``, rank-1 ``p``), the Cauchy class's params;
- `DenseWeight`: a ``[H, max_len, max_len]`` matrix.

``taps(length, causal)`` gives Toeplitz taps for the ``toeplitz`` class (lags ``0..T-1``,
or the centred two-sided ``[H, 2T-1]`` when bidirectional) from any of the first four.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from archdsl.mixers.cauchy import s4_kernels
from archdsl.mixers.vandermonde import s4d_kernel, s4d_kernels, two_sided_from_kernels


class ExplicitFilter(nn.Module):
    """Free taps per head, up to ``max_len`` lags in each allowed direction."""

    def __init__(self, heads: int, max_len: int, causal: bool) -> None:
        super().__init__()
        width = max_len if causal else 2 * max_len - 1
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(heads, width) / max_len)

    def taps(self, length: int, causal: bool) -> Tensor:
        if length > self.max_len:
            raise ValueError(f"explicit filter: length {length} exceeds max_len {self.max_len}")
        return self.weight

    def params(self, length: int, causal: bool) -> dict[str, Tensor]:
        return {"filter": self.taps(length, causal)}


class ImplicitFilter(nn.Module):
    """Hyena's implicit filter: ``h_l = MLP(pos(l)) * exp(-rate |l|)``, per head.

    ``pos(l)``: ``l / L_ref`` and ``bands`` sine / cosine pairs of it; the decay rates are
    spread log-uniformly over heads so that some heads see far and some near.
    """

    freqs: Tensor
    rates: Tensor

    def __init__(self, heads: int, hidden: int = 32, bands: int = 8, ref_len: int = 1024):
        super().__init__()
        self.ref_len = ref_len
        self.register_buffer("freqs", torch.arange(1, bands + 1, dtype=torch.float32) * math.pi)
        self.mlp = nn.Sequential(
            nn.Linear(1 + 2 * bands, hidden),
            _Sine(),
            nn.Linear(hidden, hidden),
            _Sine(),
            nn.Linear(hidden, heads),
        )
        rates = torch.logspace(math.log10(0.3), math.log10(30.0), heads)
        self.register_buffer("rates", rates)

    def one_sided(self, length: int) -> Tensor:
        """Taps for lags ``0 .. T-1``: ``[H, T]``."""
        lag = torch.arange(length, dtype=self.freqs.dtype, device=self.freqs.device)
        pos = (lag / self.ref_len).unsqueeze(-1)
        feats = torch.cat([pos, (pos * self.freqs).sin(), (pos * self.freqs).cos()], dim=-1)
        window = torch.exp(-self.rates.unsqueeze(-1) * pos.T)  # [H, T]
        return self.mlp(feats).T * window

    def taps(self, length: int, causal: bool) -> Tensor:
        taps = self.one_sided(length)
        if causal:
            return taps
        return torch.cat([taps[:, 1:].flip(-1), taps], dim=-1)  # symmetric in |l|

    def params(self, length: int, causal: bool) -> dict[str, Tensor]:
        return {"filter": self.taps(length, causal)}


class _Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def complex_modes(state: int) -> int:
    """Complex modes of a fixed S4 / S4D kernel of ``state`` real state dimensions: the
    papers' ``N`` (S4's ``d_state``) is held as ``N / 2`` complex numbers, each standing
    for a conjugate pair (the kernels' ``2 Re``). The checker refuses an odd ``state``."""
    if state < 2 or state % 2:
        raise ValueError(f"an S4 / S4D state must be even and >= 2 (N/2 pairs), got {state}")
    return state // 2


def _lin_init(heads: int, state: int) -> tuple[Tensor, Tensor]:
    """S4D-Lin / S4 init: real parts -1/2, imaginary parts pi n."""
    re = torch.full((heads, state), 0.5)
    im = math.pi * torch.arange(state, dtype=torch.float32).expand(heads, state).clone()
    return re, im


class S4DParams(nn.Module):
    """Parameters of the fixed Vandermonde (S4D) mixer; ``a = -exp(log_a_re) + i a_im``.
    ``state``: real state dimensions, ``state / 2`` complex modes (`complex_modes`)."""

    def __init__(self, heads: int, state: int, causal: bool) -> None:
        super().__init__()
        state = complex_modes(state)
        re, im = _lin_init(heads, state)
        self.log_a_re = nn.Parameter(re.log())
        self.a_im = nn.Parameter(im)
        self.log_dt = nn.Parameter(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.b = nn.Parameter(torch.ones(heads, state, 2) / math.sqrt(2))
        self.c = nn.Parameter(torch.randn(heads, state, 2) / math.sqrt(2 * state))
        self.c_bw = None if causal else nn.Parameter(torch.randn(heads, state, 2) / state)

    def params(self, length: int, causal: bool) -> dict[str, Tensor]:
        p = {
            "log_dt": self.log_dt,
            "a": torch.complex(-self.log_a_re.exp(), self.a_im),
            "b": torch.view_as_complex(self.b),
            "c": torch.view_as_complex(self.c),
        }
        if self.c_bw is not None:
            p["c_bw"] = torch.view_as_complex(self.c_bw)
        return p

    def taps(self, length: int, causal: bool) -> Tensor:
        p = self.params(length, causal)
        if causal:
            return s4d_kernel(p["log_dt"], p["a"], p["b"], p["c"], length)
        k_fw, k_bw = s4d_kernels(p["log_dt"], p["a"], p["b"], [p["c"], p["c_bw"]], length)
        return two_sided_from_kernels(k_fw, k_bw)


class S4Params(nn.Module):
    """Parameters of the fixed Cauchy (S4, DPLR) mixer; ``ct`` is S4's ``C~``.
    ``state``: real state dimensions, ``state / 2`` complex modes (`complex_modes`)."""

    def __init__(self, heads: int, state: int, causal: bool, max_len: int = 0) -> None:
        super().__init__()
        state = complex_modes(state)
        re, im = _lin_init(heads, state)
        self.max_len = max_len
        self.log_lam_re = nn.Parameter(re.log())
        self.lam_im = nn.Parameter(im)
        self.log_dt = nn.Parameter(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.p = nn.Parameter(torch.randn(heads, state, 2) * 0.1)
        self.b = nn.Parameter(torch.ones(heads, state, 2) / math.sqrt(2))
        self.ct = nn.Parameter(torch.randn(heads, state, 2) / math.sqrt(2 * state))
        self.ct_bw = None if causal else nn.Parameter(torch.randn(heads, state, 2) / state)

    def params(self, length: int, causal: bool) -> dict[str, Tensor | int | None]:
        p: dict[str, Tensor | int | None] = {
            "log_dt": self.log_dt,
            "lam": torch.complex(-self.log_lam_re.exp(), self.lam_im),
            "p": torch.view_as_complex(self.p),
            "b": torch.view_as_complex(self.b),
            "ct": torch.view_as_complex(self.ct),
            # S4 ties C~ to one kernel length; shorter inputs use its first T taps.
            "kernel_len": max(self.max_len, length),
        }
        if self.ct_bw is not None:
            p["ct_bw"] = torch.view_as_complex(self.ct_bw)
        return p

    def taps(self, length: int, causal: bool) -> Tensor:
        p = self.params(length, causal)
        args = (p["log_dt"], p["lam"], p["p"], p["b"])
        cts = [p["ct"]] if causal else [p["ct"], p["ct_bw"]]
        kernels = s4_kernels(*args, cts, length, p["kernel_len"])  # type: ignore[arg-type]
        return kernels[0] if causal else two_sided_from_kernels(kernels[0], kernels[1])


class DenseWeight(nn.Module):
    """A free ``[H, max_len, max_len]`` mixing matrix (the dense class)."""

    def __init__(self, heads: int, max_len: int) -> None:
        super().__init__()
        if max_len <= 0:
            raise ValueError("dense mixer needs max_len > 0")
        self.weight = nn.Parameter(torch.randn(heads, max_len, max_len) / math.sqrt(max_len))

    def params(self, length: int, causal: bool) -> dict[str, Tensor]:
        return {"weight": self.weight}
