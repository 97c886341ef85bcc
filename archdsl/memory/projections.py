"""The small modules a memory layer is built from: short causal convs, gate projections.

Conventions shared with `archdsl.memory.layer`:

- sequences are ``[B, T, C]`` (channels last), heads are split off later;
- a gate *role* is one of ``lr`` (learner rate), ``beta`` (momentum), ``alpha`` (retention,
  fraction kept) or ``delta`` (Huber threshold); its modules and parameters are named
  after the role (``lr_proj``, ``alpha_A_log``, ``beta_param``, ...);
- ``alpha`` leaves this module in log space (``log alpha <= 0``), the others as rates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from archdsl.ir.memory import Gate

GATE_ROLES = ("lr", "beta", "alpha", "delta")

# Where a data gate starts when the spec gives no `value`: decays near 1 (keep almost
# everything), small learning rates for deep memories, the usual momentum.
_DEFAULT_TARGET = {"lr": 0.1, "beta": 0.9, "alpha": 0.99, "delta": 1.0}
_DEEP_LR_TARGET = 0.01


class CausalShortConv(nn.Module):
    """Depthwise causal convolution over time, kernel ``kernel``, no bias.

    ``y[t, c] = sum_j weight[c, j] * x[t - (kernel - 1) + j, c]`` with zeros before the
    sequence start, or the ``cache`` (the last ``kernel - 1`` inputs of the previous call)
    when continuing a sequence. Parameter: ``weight`` ``[channels, kernel]``.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.channels = channels
        self.kernel = kernel
        bound = 1.0 / math.sqrt(kernel)  # fan-in of a depthwise filter is the kernel size
        self.weight = nn.Parameter(torch.empty(channels, kernel).uniform_(-bound, bound))

    def empty_cache(self, batch_size: int, like: Tensor) -> Tensor:
        """The cache at the start of a sequence: ``kernel - 1`` zero inputs."""
        return like.new_zeros(batch_size, self.kernel - 1, self.channels)

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, T, C]``, ``cache`` ``[B, kernel - 1, C]`` -> (y ``[B, T, C]``, new cache)."""
        full = torch.cat([cache, x], dim=1)
        y = ShiftedDepthwiseConv.apply(full, self.weight)
        new_cache = full[:, full.shape[1] - (self.kernel - 1) :]
        return y, new_cache


class ShiftedDepthwiseConv(torch.autograd.Function):
    """``y[:, t] = sum_j weight[:, j] * full[:, t + j]``: a valid depthwise convolution over
    time, channels last. full ``[B, T + K - 1, C]``, weight ``[C, K]`` -> y ``[B, T, C]``
    (contiguous).

    K shifted multiply-adds over contiguous time slices, forward and backward: for the
    short kernels of memory layers this is several times faster on CPU than a grouped
    ``conv1d`` (whose depthwise backward is slow) and keeps the channels-last layout."""

    @staticmethod
    def forward(ctx: Any, full: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        taps = weight.t().contiguous()  # [K, C]: each tap contiguous over channels
        length = full.shape[1] - taps.shape[0] + 1
        y = full[:, :length] * taps[0]
        for j in range(1, taps.shape[0]):
            y.addcmul_(full[:, j : j + length], taps[j])
        ctx.save_for_backward(full, taps)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        full, taps = ctx.saved_tensors
        length = g.shape[1]
        g_full = torch.zeros_like(full)
        prod = torch.empty_like(g)  # one product buffer for all taps (stays in cache)
        g_taps = []
        for j in range(taps.shape[0]):
            g_full[:, j : j + length].addcmul_(g, taps[j])
            g_taps.append(torch.mul(g, full[:, j : j + length], out=prod).sum((0, 1)))
        return g_full, torch.stack(g_taps, dim=1)


class GateProjection(nn.Module):
    """``d_model -> out`` projection of a data gate; low rank ``d_model -> rank -> out``.

    Full rank: parameters ``weight`` ``[out, d_model]`` and ``bias`` ``[out]`` (no bias for
    the mamba parametrisation, whose bias is ``dt_bias``). Low rank: ``down.weight``
    ``[rank, d_model]``, ``up.weight`` ``[out, rank]``, ``up.bias``.
    """

    def __init__(self, d_model: int, out: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.rank = rank
        if rank > 0:
            self.down = nn.Linear(d_model, rank, bias=False)
            self.up = nn.Linear(rank, out, bias=bias)
            nn.init.normal_(self.up.weight, std=0.02)
        else:
            self.weight = nn.Parameter(torch.empty(out, d_model).normal_(std=0.02))
            self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    def set_bias(self, value: float) -> None:
        bias = self.up.bias if self.rank > 0 else self.bias
        if bias is not None:
            nn.init.constant_(bias, value)

    def forward(self, x: Tensor) -> Tensor:
        if self.rank > 0:
            return self.up(self.down(x))  # type: ignore[no-any-return]
        return F.linear(x, self.weight, self.bias)


def feature_activation(kind: str, x: Tensor) -> Tensor:
    """The activation ``Features.act`` applied to q, k, v.

    ``elu`` is Katharopoulos' positive feature map ``elu(x) + 1``.
    """
    if kind == "none":
        return x
    if kind == "silu":
        return F.silu(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "elu":
        return F.elu(x) + 1.0
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown feature activation '{kind}'")


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis (smooth at 0, unlike F.normalize)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def inverse_activation(act: str | None, target: float) -> float:
    """The pre-activation z with ``act(z) == target`` (for bias and parameter inits)."""
    if act in (None, "identity"):
        return target
    if act in ("sigmoid", "logsigmoid"):
        return math.log(target / (1.0 - target))
    if act == "softplus":
        return math.log(math.expm1(target))
    raise ValueError(f"no inverse for gate activation '{act}'")


def gate_target(role: str, gate: Gate, deep: bool) -> float:
    """The value a gate should start near: the spec's ``value``, else a role default."""
    if gate.value is not None:
        return gate.value
    if role == "lr" and deep:
        return _DEEP_LR_TARGET
    return _DEFAULT_TARGET[role]


def mamba_init(size: int) -> tuple[Tensor, Tensor]:
    """Mamba2's initialisation: ``A ~ U[1, 16]`` (A_log = log A) and ``dt ~ logU[1e-3, 0.1]``
    stored as ``dt_bias = softplus^-1(dt)``, so initial decays exp(-A dt) are close to 1."""
    a = torch.empty(size).uniform_(1.0, 16.0)
    dt = torch.exp(torch.empty(size).uniform_(math.log(1e-3), math.log(0.1))).clamp(min=1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    return torch.log(a), dt_bias
