"""Hand-written Llama-style Transformer (Touvron et al. 2023), written from the paper.

Shares no code with archdsl. Pre-norm residual blocks:
    h = h + Attn(RMSNorm(h));  h = h + W_down(silu(W_gate x) * W_up x) with x = RMSNorm(h)
Causal multi-head attention with rotary embeddings (Su et al. 2021) applied to
interleaved pairs (x_{2i}, x_{2i+1}) with theta_i = base^(-2i/d). Attention is computed
token by token: o_t = sum_{j<=t} softmax_j(q_t . k_j / sqrt(d)) v_j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerWeights:
    attn_norm: Tensor
    wq: Tensor
    wk: Tensor
    wv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor


@dataclass
class Weights:
    embedding: Tensor  # [vocab, d]
    layers: list[LayerWeights]
    final_norm: Tensor
    lm_head: Tensor  # [vocab, d]


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rotate(x: Tensor, position: int, base: float) -> Tensor:
    """Rotary embedding of one token's head vector x [..., d]."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        theta = position * base ** (-2.0 * i / d)
        c, s = math.cos(theta), math.sin(theta)
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * c - b * s
        out[..., 2 * i + 1] = a * s + b * c
    return out


def attention(x: Tensor, w: LayerWeights, heads: int, base: float) -> Tensor:
    bsz, t, d = x.shape
    hd = d // heads
    q = (x @ w.wq.T).view(bsz, t, heads, hd)
    k = (x @ w.wk.T).view(bsz, t, heads, hd)
    v = (x @ w.wv.T).view(bsz, t, heads, hd)
    q = torch.stack([rotate(q[:, i], i, base) for i in range(t)], dim=1)
    k = torch.stack([rotate(k[:, i], i, base) for i in range(t)], dim=1)
    outs = []
    for i in range(t):
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, : i + 1]) / math.sqrt(hd)
        probs = torch.softmax(scores, dim=-1)
        outs.append(torch.einsum("bhj,bjhd->bhd", probs, v[:, : i + 1]))
    o = torch.stack(outs, dim=1).reshape(bsz, t, d)
    return o @ w.wo.T


def forward(ids: Tensor, weights: Weights, heads: int, base: float = 10000.0) -> Tensor:
    """Logits [B, T, vocab] for token ids [B, T]."""
    h = weights.embedding[ids]
    for w in weights.layers:
        h = h + attention(rms_norm(h, w.attn_norm), w, heads, base)
        x = rms_norm(h, w.ffn_norm)
        gate = x @ w.w_gate.T
        h = h + (gate * torch.sigmoid(gate) * (x @ w.w_up.T)) @ w.w_down.T
    return rms_norm(h, weights.final_norm) @ weights.lm_head.T
