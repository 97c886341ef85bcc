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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        y = F.conv1d(full.transpose(1, 2), self.weight.unsqueeze(1), groups=self.channels)
        new_cache = full[:, full.shape[1] - (self.kernel - 1) :]
        return y.transpose(1, 2), new_cache


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
