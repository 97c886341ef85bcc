"""The pieces of a Miras memory shared by every algorithm: structure, bias, retention maps.

Conventions (DESIGN.md 1.1). A memory's weights are a tuple of tensors with arbitrary
leading (batch) dimensions:

- ``vector``: ``(w,)`` with w ``[..., dk]``; ``M(x) = x * w`` (dk == dv);
- ``matrix``: ``(W,)`` with W ``[..., dk, dv]``; ``M(x) = x @ W``;
- ``mlp``: ``(W_1, ..., W_depth)`` with W_i ``[..., d_in, d_out]``, hidden width
  ``int(expand * dk)``, ``M(x) = [x +] norm(f(x))``, ``f = W_depth^T act(... act(W_1^T x))``:
  the activation sits between layers, there are no biases, the norm has no learned affine.

Smooth surrogates (Miras): ``|x| ~ sqrt(x^2 + SMOOTH_EPS)`` in the lp, l1 and Yaad-mixture
losses and ``||e|| ~ sqrt(||e||^2 + SMOOTH_EPS)`` in the robust loss, so that the inner
gradient (and the outer gradient through it) is defined at e = 0. The losses here are
what the reference differentiates with ``torch.func``; ``bias_output_grad`` is the same
derivative written by hand for the fast paths (tests check that they agree).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Structure

SMOOTH_EPS = 1e-6
NORM_EPS = 1e-5


# --- structure ------------------------------------------------------------------------


def layer_dims(struct: Structure, dk: int, dv: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of each weight of a matrix / mlp memory (vector: [(dk, dk)])."""
    if struct.kind in ("vector", "matrix"):
        return [(dk, dv)]
    hidden = int(struct.expand * dk)
    widths = [dk] + [hidden] * (struct.depth - 1) + [dv]
    return list(zip(widths[:-1], widths[1:]))


def activation(name: str, x: Tensor) -> Tensor:
    """The memory's inner activation (gelu is the exact erf form)."""
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "silu":
        return x * torch.sigmoid(x)
    if name == "relu":
        return torch.relu(x)
    if name == "tanh":
        return torch.tanh(x)
    return x


def activation_grad(name: str, x: Tensor) -> Tensor:
    """d activation(x) / dx, elementwise (written by hand for the fast paths)."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return cdf + x * pdf
    if name == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "relu":
        return (x > 0).to(x.dtype)
    if name == "tanh":
        return 1.0 - torch.tanh(x) ** 2
    return torch.ones_like(x)


def output_norm(kind: str, z: Tensor) -> Tensor:
    """LayerNorm / RMSNorm over the last dim, without affine parameters."""
    if kind == "layer":
        zc = z - z.mean(-1, keepdim=True)
        return zc * torch.rsqrt((zc * zc).mean(-1, keepdim=True) + NORM_EPS)
    if kind == "rms":
        return z * torch.rsqrt((z * z).mean(-1, keepdim=True) + NORM_EPS)
    return z


def output_norm_backward(kind: str, z: Tensor, dy: Tensor) -> Tensor:
    """dL/dz given dL/dy for y = output_norm(kind, z) (the vector-Jacobian product)."""
    if kind == "layer":
        zc = z - z.mean(-1, keepdim=True)
        rstd = torch.rsqrt((zc * zc).mean(-1, keepdim=True) + NORM_EPS)
        y = zc * rstd
        mean_dy = dy.mean(-1, keepdim=True)
        mean_dyy = (dy * y).mean(-1, keepdim=True)
        return rstd * (dy - mean_dy - y * mean_dyy)
    if kind == "rms":
        rstd = torch.rsqrt((z * z).mean(-1, keepdim=True) + NORM_EPS)
        y = z * rstd
        return rstd * (dy - y * (dy * y).mean(-1, keepdim=True))
    return dy


def memory_forward(struct: Structure, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """M_W(x). x ``[..., dk]`` with weights batched like x's leading dims (``x @ W``)."""
    if struct.kind == "vector":
        return x * weights[0]
    if struct.kind == "matrix":
        return (x.unsqueeze(-2) @ weights[0]).squeeze(-2)
    h = x
    for i, w in enumerate(weights):
        h = (h.unsqueeze(-2) @ w).squeeze(-2)
        if i < len(weights) - 1:
            h = activation(struct.act, h)
    h = output_norm(struct.norm, h)
    return x + h if struct.residual else h


# --- bias (inner loss) ------------------------------------------------------------------


def _smooth_abs(x: Tensor) -> Tensor:
    return torch.sqrt(x * x + SMOOTH_EPS)


def bias_loss(bias: Bias, y: Tensor, v: Tensor, delta: Tensor) -> Tensor:
    """The inner loss l(y = M(k), v), summed over the last dim. ``delta``: Huber threshold,
    broadcast against ``y[..., 0]`` (ignored by the other biases)."""
    e = y - v
    if bias.kind == "dot":
        return -(y * v).sum(-1)
    if bias.kind == "l2":
        return 0.5 * (e * e).sum(-1)
    if bias.kind == "lp":
        return (_smooth_abs(e) ** bias.p).sum(-1)
    if bias.kind == "l1":
        return _smooth_abs(e).sum(-1)
    if bias.kind == "robust":
        return 0.5 * (e * e).sum(-1) + bias.radius * torch.sqrt((e * e).sum(-1) + SMOOTH_EPS)
    return _huber_loss(bias.form, e, delta)


def _huber_loss(form: str, e: Tensor, delta: Tensor) -> Tensor:
    if form == "coord":
        d = delta.unsqueeze(-1)
        quad = 0.5 * e * e
        lin = d * (e.abs() - 0.5 * d)
        return torch.where(e.abs() <= d, quad, lin).sum(-1)
    sq = (e * e).sum(-1)
    inside = sq <= delta * delta
    if form == "norm":
        # the norm is only used outside the radius; clamped there, its derivative stays
        # finite at e = 0, where sqrt's is infinite (inf * 0 = NaN through the where)
        norm = torch.sqrt(torch.maximum(sq, delta * delta))
        return torch.where(inside, 0.5 * sq, delta * (norm - 0.5 * delta))
    # Yaad mixture: the l2 step inside the radius, delta times the l1 step outside.
    return torch.where(inside, 0.5 * sq, delta * _smooth_abs(e).sum(-1))


def bias_output_grad(bias: Bias, y: Tensor, v: Tensor, delta: Tensor) -> Tensor:
    """dl/dy of `bias_loss`, by hand (same shapes as y)."""
    e = y - v
    if bias.kind == "dot":
        return -v.expand_as(y)
    if bias.kind == "l2":
        return e
    if bias.kind == "lp":
        return bias.p * e * (e * e + SMOOTH_EPS) ** ((bias.p - 2.0) / 2.0)
    if bias.kind == "l1":
        return e / _smooth_abs(e)
    if bias.kind == "robust":
        norm = torch.sqrt((e * e).sum(-1, keepdim=True) + SMOOTH_EPS)
        return e + bias.radius * e / norm
    d = delta.unsqueeze(-1)
    if bias.form == "coord":
        return torch.where(e.abs() <= d, e, d * torch.sign(e))
    sq = (e * e).sum(-1, keepdim=True)
    inside = sq <= d * d
    if bias.form == "norm":
        # clamped as in `_huber_loss`: no 0 / 0 in the branch that is not taken
        return torch.where(inside, e, d * e / torch.sqrt(torch.maximum(sq, d * d)))
    return torch.where(inside, e, d * e / _smooth_abs(e))


# --- retention maps ---------------------------------------------------------------------


def weight_dims(struct: Structure) -> tuple[int, ...]:
    """The dims of one weight tensor that a norm / softmax runs over (per batch and head)."""
    return (-1,) if struct.kind == "vector" else (-2, -1)


def lq_normalise(struct: Structure, acc: Tensor, q: float) -> Tensor:
    """Moneta: W = A / ||A||_q^(q-2), the entrywise q-norm of each weight tensor."""
    dims = weight_dims(struct)
    norm = (acc.abs() ** q).sum(dim=dims, keepdim=True) ** (1.0 / q)
    return acc / norm ** (q - 2.0)


def kl_log_project(struct: Structure, logits: Tensor) -> Tensor:
    """Memora: log softmax over the input axis of each weight (each output unit's incoming
    weights form a distribution; vector memory: over its dk entries), scale c = 1."""
    return torch.log_softmax(logits, dim=weight_dims(struct)[0])


def soft_threshold(x: Tensor, gamma: Tensor) -> Tensor:
    """S_gamma(x) = sign(x) max(|x| - gamma, 0)."""
    return torch.sign(x) * torch.relu(x.abs() - gamma)


def elastic_coefficients(lr: Tensor, l1: float, l2: float) -> tuple[Tensor, Tensor]:
    """(lambda, gamma) of the elastic-net step W = S_gamma(lambda (W_prev + Delta)).

    Miras: ``W = S_gamma(lambda W_prev - zeta g)`` with ``lambda = beta / (beta + eta)``,
    ``zeta = eta lambda``, ``gamma = eta beta / (alpha (eta + beta))``, where ``1/beta`` is
    the l2 strength (``Retention.l2``) and ``1/alpha`` the l1 strength (``Retention.l1``):
    lambda = 1 / (1 + eta l2), gamma = eta lambda l1.
    """
    lam = 1.0 / (1.0 + lr * l2)
    return lam, lr * lam * l1
