"""Hand-written inner gradients of a memory, for many tokens at once (the fast paths).

For a matrix or mlp memory the gradient of the inner loss w.r.t. each weight is, per
token, an outer product ``x_l ⊗ delta_l`` of the layer's input and the back-propagated
error at its output; `key_backward` returns those factors for n tokens at the same
weights, so that the chunked algorithm never forms a per-token gradient matrix unless it
needs one. The reference computes the same quantities with ``torch.func.grad`` (tests
compare the two).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Structure
from archdsl.memory.inner import (
    activation,
    activation_grad,
    bias_output_grad,
    output_norm,
    output_norm_backward,
)

Factors = list[tuple[Tensor, Tensor]]


def key_backward(
    struct: Structure,
    bias: Bias,
    weights: tuple[Tensor, ...] | list[Tensor],
    k: Tensor,
    v: Tensor,
    delta: Tensor,
) -> Factors:
    """Per weight, (x_l ``[B, H, n, d_in]``, delta_l ``[B, H, n, d_out]``) such that the
    gradient of token i is ``x_l[i] ⊗ delta_l[i]`` (vector memory: ``x * delta``).

    weights ``[B, H, d_in, d_out]`` (vector: ``[B, H, dk]``), shared by the n tokens;
    k ``[B, H, n, dk]``, v ``[B, H, n, dv]``, delta (Huber) ``[B, H, n]``.
    """
    if struct.kind == "vector":
        y = k * weights[0].unsqueeze(-2)
        return [(k, bias_output_grad(bias, y, v, delta))]
    mlp = struct.kind == "mlp"
    norm = struct.norm if mlp else "none"
    inputs, pre = [], []
    h = k
    last = len(weights) - 1
    for i, w in enumerate(weights):
        inputs.append(h)
        z = h @ w
        pre.append(z)
        h = activation(struct.act, z) if i < last else z
    y = output_norm(norm, h)
    if mlp and struct.residual:
        y = k + y
    dz = output_norm_backward(norm, h, bias_output_grad(bias, y, v, delta))
    deltas: list[Tensor] = []
    for i in range(last, -1, -1):
        deltas.insert(0, dz)
        if i > 0:
            dz = (dz @ weights[i].transpose(-1, -2)) * activation_grad(struct.act, pre[i - 1])
    return list(zip(inputs, deltas))


def token_gradients(
    struct: Structure,
    bias: Bias,
    weights: tuple[Tensor, ...],
    k: Tensor,
    v: Tensor,
    delta: Tensor,
) -> tuple[Tensor, ...]:
    """dl/dW of one token per (batch, head): k ``[B, H, dk]``, v ``[B, H, dv]``, delta
    ``[B, H]``; the same contract as `archdsl.memory.reference.token_grad_fn`."""
    factors = key_backward(
        struct, bias, weights, k.unsqueeze(-2), v.unsqueeze(-2), delta[..., None]
    )
    if struct.kind == "vector":
        x, d = factors[0]
        return ((x * d).squeeze(-2),)
    return tuple(torch.einsum("bhnd,bhne->bhde", x, d) for x, d in factors)
