"""The silu mlp memory's key pass for `chunked_ttt`, with silu and its derivative fused.

`key_backward` (inner_grad) builds silu and silu' from separate elementwise ops, each a
node of the outer autograd graph; on CPU at the sizes of a Titans chunk those small ops,
forward and backward, cost as much as the matrix products. `SiluAndGrad` computes both in
one node with a hand-written backward (silu'' by formula), and `negated_key_backward` uses
it for mlp memories with the silu activation; every other memory goes to `key_backward`.
The values are those of `key_backward` up to the sign (same formulas); only the outer
gradient is computed in a different order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Structure
from archdsl.memory.inner import bias_output_grad, output_norm, output_norm_backward
from archdsl.memory.inner_grad import Factors, key_backward


class SiluAndGrad(torch.autograd.Function):
    """``(silu(z), silu'(z))`` with ``silu(z) = z s``, ``silu'(z) = s (1 + z (1 - s))``,
    ``s = sigmoid(z)``; backward uses ``silu''(z) = s (1 - s) (2 + z (1 - 2 s))``."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        s = torch.sigmoid(z)
        d = torch.rsub(s, 1.0).mul_(z).add_(1.0).mul_(s)  # in place: fewer fresh buffers
        ctx.save_for_backward(z, s, d)
        return z * s, d

    @staticmethod
    def backward(ctx: Any, g_act: Tensor | None, g_der: Tensor | None) -> Tensor:  # type: ignore[override]
        z, s, d = ctx.saved_tensors
        if g_der is None:
            return g_act * d if g_act is not None else torch.zeros_like(z)
        second = torch.rsub(s, 1.0, alpha=2.0).mul_(z).add_(2.0)
        second.mul_(torch.addcmul(s, s, s, value=-1.0)).mul_(g_der)
        return second.addcmul_(g_act, d) if g_act is not None else second


def silu_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
    """silu(z) and silu'(z) in one autograd node (see `SiluAndGrad`)."""
    act, der = SiluAndGrad.apply(z)
    return act, der


def negated_key_backward(
    struct: Structure,
    bias: Bias,
    weights: tuple[Tensor, ...] | list[Tensor],
    k: Tensor,
    v: Tensor,
    delta: Tensor,
) -> Factors:
    """`archdsl.memory.inner_grad.key_backward` with every delta_l negated: (x_l, -delta_l).

    The chunked form only ever subtracts gradients, so it adds these factors instead (a
    product added needs no negation, forward or backward). For the l2 bias the output
    error is built as ``v - y`` (exactly ``-(y - v)``); otherwise it is negated once, at
    the output, and the negation runs back through the linear backward pass."""
    if struct.kind != "mlp" or struct.act != "silu":
        return [(x, -d) for x, d in key_backward(struct, bias, weights, k, v, delta)]
    inputs, ders = [], []
    h = k
    last = len(weights) - 1
    for i, w in enumerate(weights):
        inputs.append(h)
        z = h @ w
        if i < last:
            h, der = silu_and_grad(z)
            ders.append(der)
        else:
            h = z
    y = output_norm(struct.norm, h)
    if struct.residual:
        y = k + y
    neg_dy = v - y if bias.kind == "l2" else -bias_output_grad(bias, y, v, delta)
    dz = output_norm_backward(struct.norm, h, neg_dy)
    deltas: list[Tensor] = []
    for i in range(last, -1, -1):
        deltas.insert(0, dz)
        if i > 0:
            dz = (dz @ weights[i].transpose(-1, -2)) * ders[i - 1]
    return list(zip(inputs, deltas))
