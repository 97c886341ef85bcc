"""The block shared by Moneta, Yaad and Memora (Behrouz et al. 2025, "It's All Connected").

Paper: q, k, v projections each followed by a depthwise causal conv (kernel 4); q and k
l2-normalised; memory ``M(x) = x + LN(W1 GELU(W2 x))`` (2-layer MLP, expansion 4, LayerNorm
without affine -- its parameters are the memory's, which are only W1, W2 here); the output
normalised (RMSNorm per head) and gated by a linear layer (sigmoid(x W_g)), then W_o.
The rates eta (``lr``), alpha (``alpha``, fraction kept) and delta (``delta``) come from a
low-rank projection ``d -> r -> .`` of the token; the paper makes them per channel, here they
are per head (archdsl's deep memories take per-head rates; see the test's report).

Weights (MemoryLayer names): ``{q,k,v}_proj.weight``, ``{q,k,v}_conv.weight``,
``{lr,alpha,delta}_proj.down.weight`` / ``.up.weight`` / ``.up.bias``, ``w0_0`` / ``w0_1``,
``o_norm.weight``, ``g_proj.weight``, ``o_proj.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.references.block import gated_output, l2norm, linear, projected_feature
from tests.references.mlp_memory import mlp_forward, mlp_weight_grad

Pair = tuple[Tensor, Tensor]


def miras_features(x: Tensor, w: dict[str, Tensor], heads: int) -> tuple[Tensor, Tensor, Tensor]:
    q = l2norm(projected_feature(x, w, "q", heads, conv=True, act="none"))
    k = l2norm(projected_feature(x, w, "k", heads, conv=True, act="none"))
    v = projected_feature(x, w, "v", heads, conv=True, act="none")
    return q, k, v


def low_rank_gate(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    """The pre-activation ``(x D^T) U^T + b`` of a low-rank gate, ``[B, T, H]``."""
    down = linear(x, w[f"{name}_proj.down.weight"])
    return linear(down, w[f"{name}_proj.up.weight"], w[f"{name}_proj.up.bias"])


def miras_rates(x: Tensor, w: dict[str, Tensor], with_delta: bool) -> dict[str, Tensor]:
    """eta = sigmoid, alpha = sigmoid (kept), delta = softplus; each ``[B, T, H]``."""
    rates = {
        "eta": torch.sigmoid(low_rank_gate(x, w, "lr")),
        "alpha": torch.sigmoid(low_rank_gate(x, w, "alpha")),
    }
    if with_delta:
        rates["delta"] = F.softplus(low_rank_gate(x, w, "delta"))
    return rates


def read(mem: Pair, q_t: Tensor) -> Tensor:
    return mlp_forward(mem, q_t, "gelu", residual=True, layer_norm=True)


def memory_error(mem: Pair, k_t: Tensor, v_t: Tensor) -> Tensor:
    return mlp_forward(mem, k_t, "gelu", residual=True, layer_norm=True) - v_t


def weight_grad(mem: Pair, k_t: Tensor, dl_dy: Tensor) -> Pair:
    return mlp_weight_grad(mem, k_t, dl_dy, "gelu", layer_norm=True)


def initial_memory(w: dict[str, Tensor], batch_size: int) -> Pair:
    return (
        w["w0_0"].unsqueeze(0).expand(batch_size, -1, -1, -1),
        w["w0_1"].unsqueeze(0).expand(batch_size, -1, -1, -1),
    )


def per_head(rate: Tensor, t: int) -> Tensor:
    """A rate ``[B, T, H]`` at token t, shaped to scale a weight ``[B, H, n, m]``."""
    return rate[:, t, :, None, None]


def miras_output(outs: list[Tensor], x: Tensor, w: dict[str, Tensor]) -> Tensor:
    return gated_output(torch.stack(outs, dim=1), x, w, gate="sigmoid")
