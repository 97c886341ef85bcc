"""The block-level ops of the vocabulary (`archdsl.vocab.BLOCK_OPS`) as nn.Modules.

Every op maps ``[B, T, d_in]`` to ``[B, T, d_out]``; `make_op` builds one from its
name and resolved options (the generated code calls it once per call site).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.runtime.streaming import active_stream, run_streamed

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "identity": lambda x: x,
}


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * rms * self.weight


class L2Norm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, eps=1e-6)


class Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class MLP(nn.Module):
    """x -> W2 act(W1 x), hidden = round(expand * width)."""

    def __init__(self, width: int, expand: float = 4.0, act: str = "gelu") -> None:
        super().__init__()
        hidden = max(1, round(expand * width))
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class GLU(nn.Module):
    """Gated linear unit: W_down (act(W_gate x) * W_up x) (SwiGLU with act = silu)."""

    def __init__(self, width: int, expand: float, act: str) -> None:
        super().__init__()
        hidden = max(1, round(expand * width))
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class ShortConv(nn.Module):
    """Depthwise convolution over time; causal (left-padded) or centred."""

    def __init__(self, width: int, kernel: int = 4, causal: bool = True, act: str = "none") -> None:
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.conv = nn.Conv1d(width, width, kernel, groups=width, bias=True)
        self.act = ACTIVATIONS["silu"] if act == "silu" else ACTIVATIONS["identity"]

    def forward(self, x: Tensor) -> Tensor:
        if self.causal and active_stream() is not None:  # continue from the last inputs
            return run_streamed(self, x, self._empty_window, self._continue)
        k = self.kernel
        left = k - 1 if self.causal else (k - 1) // 2
        h = F.pad(x.transpose(1, 2), (left, k - 1 - left))
        return self.act(self.conv(h).transpose(1, 2))

    def _empty_window(self, batch: int) -> Tensor:
        return self.conv.weight.new_zeros(batch, self.kernel - 1, self.conv.in_channels)

    def _continue(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """Causal conv of ``x [B, T, C]`` after the previous ``k - 1`` inputs ``window``."""
        h = torch.cat([window.to(x.dtype), x], dim=1)
        y = self.act(self.conv(h.transpose(1, 2)).transpose(1, 2))
        return y, h[:, h.shape[1] - (self.kernel - 1) :]


class TokenShift(nn.Module):
    """Mix each token with the previous one: x_t + mu * (x_{t-1} - x_t), mu learned per channel."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        if active_stream() is not None:  # continue from the last input
            return run_streamed(self, x, self._empty_last, self._continue)
        prev = F.pad(x, (0, 0, 1, -1))
        return x + self.mu * (prev - x)

    def _empty_last(self, batch: int) -> Tensor:
        return self.mu.new_zeros(batch, 1, self.mu.shape[0])

    def _continue(self, x: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        prev = torch.cat([last.to(x.dtype), x[:, :-1]], dim=1)
        return x + self.mu * (prev - x), x[:, -1:]


class Scale(nn.Module):
    """A learned per-channel scale (the learned vectors of Titans' branch normalisers)."""

    def __init__(self, width: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((width,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def _linear(width: int, out: int | None = None, bias: bool = False, **_: Any) -> nn.Module:
    layer = nn.Linear(width, out or width, bias=bias)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(width))
    return layer


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "rmsnorm": lambda width, eps: RMSNorm(width, eps),
    "layernorm": lambda width, eps: nn.LayerNorm(width, eps=eps),
    "l2norm": lambda width: L2Norm(),
    "linear": _linear,
    "mlp": lambda width, expand, act: MLP(width, expand, act),
    "swiglu": lambda width, expand: GLU(width, expand, "silu"),
    "glu": lambda width, expand, act: GLU(width, expand, act),
    "shortconv": lambda width, kernel, causal: ShortConv(width, kernel, causal),
    "token_shift": lambda width: TokenShift(width),
    "scale": lambda width, init: Scale(width, init),
}


def make_op(name: str, width: int, **options: Any) -> nn.Module:
    """The module for one call of op `name` on inputs of `width` channels."""
    if name in ACTIVATIONS:
        return Activation(name)
    return _FACTORIES[name](width, **options)
