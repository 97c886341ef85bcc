"""Titans' long-term memory module, LMM variant (Behrouz, Zhong & Mirrokni 2025), token loop.

The paper's memory (Section 3.1), per head, with the memory M an MLP with weights
(W1, W2), ``M(x) = SiLU(x W1) W2`` (depth 2; the paper leaves the MLP's activation open):

    loss      l(M; x_t) = || M(k_t) - v_t ||^2                   (the paper's full square)
    surprise  S_t = eta_t S_{t-1} - theta_t grad l(M_{t'}; x_t)   (momentum)
    memory    M_t = (1 - alpha_t) M_{t-1} + S_t                   (alpha: fraction forgotten)
    read      o_t = M_t(q_t)                                      (after the write; no scale)

The gradient is taken at the *un-decayed* memory: for mini-batch size b, at the memory
``M_{t'}`` of the chunk start ``t' = t - (t mod b)`` (the paper's parallel form: all
gradients of a chunk at the chunk-start weights); b = 1 gives ``M_{t-1}``. The gradient
of the 2-layer MLP is derived by hand in `tests.references.mlp_memory`.

Parametrisation of the data-dependent rates (the paper says only "functions of x_t"):
``theta_t = sigmoid(x W_theta + b) / 2`` (the half maps the paper's full squared loss onto
a rate in (0, 1) of the half-squared loss: theta grad ||e||^2 = sigmoid(.) grad 1/2||e||^2),
``eta_t = sigmoid(x W_eta + b)``, ``1 - alpha_t = sigmoid(x W_a + b)`` (the fraction kept).
Block: q, k, v = SiLU(short causal conv(x W)), q and k l2-normalised; output RMSNorm per
head, gated by sigmoid(x W_g), then W_o.

Weights (MemoryLayer names): ``{q,k,v}_proj.weight``, ``{q,k,v}_conv.weight``,
``lr_proj.*`` (theta), ``beta_proj.*`` (eta), ``alpha_proj.*`` (kept fraction),
``w0_0`` ``[H, dk, hidden]``, ``w0_1`` ``[H, hidden, dv]`` (initial memory),
``o_norm.weight``, ``g_proj.weight``, ``o_proj.weight``.
Returns (y, (W1_T, W2_T), (S1_T, S2_T)), weights ``[B, H, ...]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.references.block import gated_output, l2norm, linear, projected_feature
from tests.references.mlp_memory import mlp_forward, mlp_weight_grad

Pair = tuple[Tensor, Tensor]


def _rate(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return torch.sigmoid(linear(x, w[f"{name}_proj.weight"], w[f"{name}_proj.bias"]))


def titans_lmm(
    x: Tensor, w: dict[str, Tensor], heads: int, batch: int = 1
) -> tuple[Tensor, Pair, Pair]:
    """x ``[B, T, d_model]`` -> (y, final memory weights, final surprise)."""
    q = l2norm(projected_feature(x, w, "q", heads, conv=True, act="silu"))
    k = l2norm(projected_feature(x, w, "k", heads, conv=True, act="silu"))
    v = projected_feature(x, w, "v", heads, conv=True, act="silu")
    theta = _rate(x, w, "lr") / 2.0
    eta = _rate(x, w, "beta")
    forget = 1.0 - _rate(x, w, "alpha")
    n = x.shape[0]
    mem = (
        w["w0_0"].unsqueeze(0).expand(n, -1, -1, -1),
        w["w0_1"].unsqueeze(0).expand(n, -1, -1, -1),
    )
    surprise = (torch.zeros_like(mem[0]), torch.zeros_like(mem[1]))
    chunk_start = mem
    outs = []
    for t in range(x.shape[1]):
        if t % batch == 0:
            chunk_start = mem
        e = mlp_forward(chunk_start, k[:, t], "silu", residual=False, layer_norm=False) - v[:, t]
        grads = mlp_weight_grad(chunk_start, k[:, t], 2.0 * e, "silu", layer_norm=False)
        th, et, fo = (g[:, t, :, None, None] for g in (theta, eta, forget))
        surprise = (et * surprise[0] - th * grads[0], et * surprise[1] - th * grads[1])
        mem = ((1 - fo) * mem[0] + surprise[0], (1 - fo) * mem[1] + surprise[1])
        outs.append(mlp_forward(mem, q[:, t], "silu", residual=False, layer_norm=False))
    o = torch.stack(outs, dim=1)
    return gated_output(o, x, w, gate="sigmoid"), mem, surprise
