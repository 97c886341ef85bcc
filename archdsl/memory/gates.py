"""Turn an IR `Gate` into the tensor a memory function takes.

- ``const``: ``value``, or ``formula`` (an `archdsl.ir.expr` expression over ``head``,
  0-based, and ``heads``) evaluated per head by `eval_expr`, a small pure-Python
  evaluator (no ``eval``); a formula adapts to the number of heads of the inputs.
- ``learned``: the parameter values are passed in (``[H]`` or ``[H, dk]``).
- ``data``: the projected activations are passed in (``[B, T, H]`` or ``[B, T, H, dk]``).

Learned and data values go through ``Gate.act``: sigmoid, softplus, identity, logsigmoid
(gives log alpha directly), mamba (``log alpha = -exp(A_log) * softplus(x + dt_bias)``).
A gate in the *decay* role crosses the kernel boundary as log alpha: a const value, or
an act that yields alpha itself (sigmoid, softplus, identity, no act), is logged;
logsigmoid and mamba already give log alpha.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from archdsl.ir.expr import BinOp, Expr, Name, Neg, Num
from archdsl.ir.memory import Gate

_BINOPS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_LOG_SPACE_ACTS = ("logsigmoid", "mamba")


def eval_expr(expr: Expr, env: Mapping[str, float]) -> float:
    """The value of an arithmetic expression (Num, Name, Neg, BinOp) in ``env``.

    >>> from archdsl.ir.expr import BinOp, Name, Num
    >>> eval_expr(BinOp(op="-", lhs=Num(value=1), rhs=Name(name="head")), {"head": 3})
    -2.0
    """
    if isinstance(expr, Num):
        return float(expr.value)
    if isinstance(expr, Name):
        if expr.name not in env:
            raise ValueError(f"unknown name '{expr.name}' in a gate formula; known: {sorted(env)}")
        return float(env[expr.name])
    if isinstance(expr, Neg):
        return -eval_expr(expr.operand, env)
    if isinstance(expr, BinOp):
        return _BINOPS[expr.op](eval_expr(expr.lhs, env), eval_expr(expr.rhs, env))
    raise ValueError(f"a gate formula may only use numbers, names and arithmetic, not {expr!r}")


def const_values(gate: Gate, heads: int) -> list[float]:
    """One value per head of a const gate (its ``value``, or its ``formula`` per head)."""
    if gate.mode != "const":
        raise ValueError(f"gate is '{gate.mode}', not const: its values must be passed in")
    if gate.formula is not None:
        return [eval_expr(gate.formula, {"head": h, "heads": heads}) for h in range(heads)]
    if gate.value is None:
        raise ValueError("a const gate needs a value or a formula")
    return [float(gate.value)] * heads


def const_gate_values(gate: Gate, heads: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """`const_values` as a ``[H]`` tensor (in the gate's own space: alpha, not log alpha)."""
    return torch.tensor(const_values(gate, heads), dtype=dtype)


def const_gate(
    gate: Gate,
    shape: tuple[int, int, int],
    *,
    decay: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A const gate as ``[B, T, H]`` (log alpha when ``decay``)."""
    B, T, H = shape
    vals = const_values(gate, H)
    if decay:
        if min(vals) <= 0.0 or max(vals) > 1.0:
            raise ValueError(f"a const decay is the fraction kept, in (0, 1]; got {vals}")
        vals = [math.log(a) for a in vals]
    per_head = torch.tensor(vals, dtype=dtype, device=device)
    return per_head.expand(B, T, H).contiguous()


def activate(
    gate: Gate,
    x: Tensor,
    *,
    decay: bool = False,
    A_log: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """Apply ``gate.act`` to learned / data values x (log alpha when ``decay``).

    ``mamba`` needs ``A_log`` and ``dt_bias`` broadcastable to x (per head: ``[H]``)."""
    act = gate.act or "identity"
    if act == "mamba":
        if A_log is None or dt_bias is None:
            raise ValueError("a mamba gate needs A_log and dt_bias")
        out = -torch.exp(A_log) * F.softplus(x + dt_bias)
    elif act == "logsigmoid":
        out = F.logsigmoid(x)
    elif act == "sigmoid":
        out = torch.sigmoid(x)
    elif act == "softplus":
        out = F.softplus(x)
    else:
        out = x
    if decay and act not in _LOG_SPACE_ACTS:
        return torch.log(out)
    return out


def learned_gate(
    gate: Gate, param: Tensor, shape: tuple[int, int, int], *, decay: bool = False
) -> Tensor:
    """A learned gate: ``param`` ``[H]`` (per head) or ``[H, dk]`` (per channel), through
    the act, broadcast to ``[B, T, H]`` / ``[B, T, H, dk]``."""
    B, T, H = shape
    if param.shape[0] != H or param.dim() > 2:
        raise ValueError(f"learned gate parameter {tuple(param.shape)}: expected [H] or [H, dk]")
    out = activate(gate, param, decay=decay)
    return out.expand(B, T, *param.shape)
