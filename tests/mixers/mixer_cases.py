"""Random parameters for every matrix-mixer class and form (shared by the mixer tests).

Each maker returns a dict of keyword parameters, float64 / complex128 leaves with
``requires_grad``; fixed forms have no batch dim (or batch 1) so that they broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, object]
B, H, N = 2, 3, 4


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def _batch(data: bool) -> int:
    return B if data else 1


def _complex(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.complex128)


def dense(t: int, causal: bool, data: bool) -> Params:
    shape = (B, H, t, t) if data else (H, t + 3, t + 3)
    return {"weight": _leaf(torch.randn(*shape, dtype=torch.float64) / math.sqrt(t))}


def attention(t: int, causal: bool, data: bool) -> Params:
    bsz = _batch(data)
    q, k = (torch.randn(bsz, t, H, N, dtype=torch.float64) for _ in range(2))
    return {"q": _leaf(q), "k": _leaf(k)}


def lowrank(t: int, causal: bool, data: bool) -> Params:
    return {**attention(t, causal, data), "scale": 0.5}


def toeplitz(t: int, causal: bool, data: bool) -> Params:
    lead = (B, H) if data else (H,)
    length = t + 5 if causal else 2 * (t + 2) - 1
    return {"filter": _leaf(torch.randn(*lead, length, dtype=torch.float64) / math.sqrt(t))}


def _s4d_common() -> dict[str, Tensor]:
    re = -torch.empty(H, N, dtype=torch.float64).uniform_(0.1, 1.0)
    im = torch.empty(H, N, dtype=torch.float64).uniform_(0.0, 3.0)
    return {
        "log_dt": torch.empty(H, dtype=torch.float64).uniform_(math.log(0.01), math.log(0.2)),
        "a": torch.complex(re, im),
        "b": _complex(H, N),
    }


def vandermonde(t: int, causal: bool, data: bool) -> Params:
    if data:
        return {
            "c": _leaf(torch.randn(B, t, H, N, dtype=torch.float64)),
            "b": _leaf(torch.randn(B, t, H, N, dtype=torch.float64)),
            "log_z": _leaf(-torch.empty(H, N, dtype=torch.float64).uniform_(0.01, 0.5)),
        }
    params = {**_s4d_common(), "c": _complex(H, N)}
    if not causal:
        params["c_bw"] = _complex(H, N)
    return {name: _leaf(v) for name, v in params.items()}


def s4_params(bidirectional: bool) -> dict[str, Tensor]:
    """DPLR parameters near S4's init: ``lam = -1/2 + i pi n``, small rank-1 ``p``."""
    n = torch.arange(N, dtype=torch.float64)
    lam = torch.complex(-0.5 * torch.ones(H, N, dtype=torch.float64), math.pi * n.expand(H, N))
    params = {
        "log_dt": torch.empty(H, dtype=torch.float64).uniform_(math.log(0.01), math.log(0.1)),
        "lam": lam,
        "p": 0.3 * _complex(H, N),
        "b": _complex(H, N),
        "ct": _complex(H, N),
    }
    if bidirectional:
        params["ct_bw"] = _complex(H, N)
    return params


def cauchy(t: int, causal: bool, data: bool) -> Params:
    if not data:
        return {name: _leaf(v) for name, v in s4_params(not causal).items()}
    return {
        "q": _leaf(F.softplus(torch.randn(B, t, H, N, dtype=torch.float64))),
        "k": _leaf(-F.softplus(torch.randn(B, t, H, N, dtype=torch.float64))),
        "c": _leaf(torch.full((H,), 0.5, dtype=torch.float64)),
    }


def _scan(t: int, bsz: int, suffix: str = "") -> dict[str, Tensor]:
    return {
        "c" + suffix: torch.randn(bsz, t, H, N, dtype=torch.float64) / 2,
        "b" + suffix: torch.randn(bsz, t, H, N, dtype=torch.float64) / 2,
        "log_a" + suffix: -F.softplus(torch.randn(bsz, t, H, dtype=torch.float64)),
        "lr" + suffix: F.softplus(torch.randn(bsz, t, H, dtype=torch.float64)),
    }


def semiseparable(t: int, causal: bool, data: bool) -> Params:
    params = _scan(t, _batch(data))
    if not causal:
        params.update(_scan(t, _batch(data), "_bw"))
    return {name: _leaf(v) for name, v in params.items()}


def quasiseparable(t: int, causal: bool, data: bool) -> Params:
    delta = torch.randn(_batch(data), t, H, dtype=torch.float64)
    return {**semiseparable(t, causal, data), "delta": _leaf(delta)}


MAKERS: dict[str, Callable[[int, bool, bool], Params]] = {
    "dense": dense,
    "attention": attention,
    "lowrank": lowrank,
    "toeplitz": toeplitz,
    "vandermonde": vandermonde,
    "cauchy": cauchy,
    "semiseparable": semiseparable,
    "quasiseparable": quasiseparable,
}
