"""Pointwise pieces of `chunked_ttt_mlp_step`: activations with their first and second
derivatives, and the affine-free output norm with its vector-Jacobian product and the
gradient of that product (the key pass differentiates the inner gradient once more).

Same definitions as `archdsl.memory.inner` (``activation``, ``output_norm`` with
``NORM_EPS``); tests check the fused path against the reference built on those.

Norm conventions, per row of width D: ``c = P z`` (``P`` centres for ``layer``, is the
identity for ``rms``), ``r = (mean(c^2) + eps)^(-1/2)``, ``n = c r``. Its Jacobian is
symmetric, ``J = r (P - n n^T / D)``, so ``J^T g = J g = r (P g - n (n . g) / D)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from archdsl.memory.inner import NORM_EPS

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def silu_prime(z: Tensor, sig: Tensor) -> Tensor:
    """``silu'(z) = s (1 + z (1 - s))`` given ``s = sigmoid(z)``."""
    return torch.rsub(sig, 1.0).mul_(z).add_(1.0).mul_(sig)


def silu_second(z: Tensor, sig: Tensor) -> Tensor:
    """``silu''(z) = s (1 - s) (2 + z (1 - 2 s))`` given ``s = sigmoid(z)``."""
    out = torch.rsub(sig, 1.0, alpha=2.0).mul_(z).add_(2.0)
    return out.mul_(torch.addcmul(sig, sig, sig, value=-1.0))


def activation_derivatives(
    name: str, z: Tensor, der: bool, second: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(act(z), act'(z) if der, act''(z) if second)`` for the memory activations."""
    if name == "silu":
        sig = torch.sigmoid(z)
        d1 = silu_prime(z, sig) if der else None
        d2 = silu_second(z, sig) if second else None
        return z * sig, d1, d2
    if name == "gelu":
        cdf = torch.erf(z * _SQRT_HALF).add_(1.0).mul_(0.5)
        pdf = torch.exp(z * z * -0.5).mul_(_INV_SQRT_2PI)
        d1 = torch.addcmul(cdf, z, pdf) if der else None
        d2 = torch.addcmul(torch.full_like(z, 2.0), z, z, value=-1.0).mul_(pdf) if second else None
        return z * cdf, d1, d2
    if name == "tanh":
        t = torch.tanh(z)
        one_minus = torch.addcmul(torch.ones_like(t), t, t, value=-1.0)
        d2 = (t * one_minus).mul_(-2.0) if second else None
        return t, one_minus if der else None, d2
    if name == "relu":
        d1 = (z > 0).to(z.dtype) if der else None
        return torch.relu(z), d1, torch.zeros_like(z) if second else None
    if name == "identity":
        return z, torch.ones_like(z) if der else None, torch.zeros_like(z) if second else None
    raise ValueError(f"unknown memory activation '{name}'")


def _centre(kind: str, x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True) if kind == "layer" else x


def norm_rows(kind: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, r)``: the normalised rows and their ``r`` ``[..., 1]`` (kind layer or rms)."""
    c = _centre(kind, z)
    r = torch.rsqrt((c * c).mean(-1, keepdim=True) + NORM_EPS)
    return c * r, r


def norm_vjp(kind: str, n: Tensor, r: Tensor, g: Tensor) -> Tensor:
    """``J g = r (P g - n (n . g) / D)``: the norm's (symmetric) Jacobian applied to g."""
    dot = (n * g).mean(-1, keepdim=True)
    return (_centre(kind, g) - n * dot).mul_(r)


def norm_vjp_grad(kind: str, n: Tensor, r: Tensor, s: Tensor, a: Tensor, g: Tensor) -> Tensor:
    """The gradient in z of ``<g, J(z) u>`` given ``s = J(z) u`` and ``a = n . u`` ``[..., 1]``:
    ``-(r^2 / D) ((g . w) n + (g . n) w + a (P g - (g . n) n / D))`` with ``w = s / r``."""
    width = n.shape[-1]
    w = s / r
    g_n = (g * n).sum(-1, keepdim=True)
    out = n * (g * w).sum(-1, keepdim=True)
    out.addcmul_(w, g_n)
    out.addcmul_(_centre(kind, g) - n * (g_n / width), a)
    return out.mul_(r * r * (-1.0 / width))
