"""The gates of a memory layer: their parameters, and how they become rates.

A memory has up to four gates (`GATE_ROLES`): the learner's ``lr``, the momentum
``beta``, the retention ``alpha`` and the Huber ``delta``. For each, `add_gate_parameters`
registers plainly named parameters on the layer and `gate_values` turns a token sequence
into the tensor the functional core expects:

- shape ``[B, T, H]`` (per head) or ``[B, T, H, dk]`` (per channel);
- ``alpha`` as ``log alpha <= 0`` (fraction kept, log space); the others as rates.

Parameter names for role ``r``: data gates ``r_proj`` (a `GateProjection`), plus
``r_A_log`` / ``r_dt_bias`` for the mamba parametrisation; learned gates ``r_param``
(the pre-activation when the gate has an ``act``, else the value itself); const gates a
non-persistent buffer ``r_const`` (not in the state_dict). A rate tied to alpha's step
(`shares_step`, Mamba2) has none: it reads ``alpha_proj`` and ``alpha_dt_bias``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.ir.memory import Gate, Memory
from archdsl.memory.gates import activate, const_gate_values
from archdsl.memory.projections import (
    GateProjection,
    gate_target,
    inverse_activation,
    mamba_init,
)


def memory_gates(mem: Memory) -> dict[str, Gate]:
    """The gates of `mem` by role, in a fixed order (lr, beta, alpha, delta)."""
    gates: dict[str, Gate] = {"lr": mem.learner.lr}
    if mem.learner.beta is not None:
        gates["beta"] = mem.learner.beta
    if mem.retention.alpha is not None:
        gates["alpha"] = mem.retention.alpha
    if mem.bias.delta is not None:
        gates["delta"] = mem.bias.delta
    return gates


def shares_step(gates: dict[str, Gate], role: str) -> bool:
    """Whether rate ``role`` is the retention gate's step ``dt`` (Mamba2's tie).

    In Mamba2 one projection gives the step ``dt = softplus(z + dt_bias)``, and both the
    decay ``alpha = exp(-exp(A_log) dt)`` and the write rate ``dt`` come from it. A rate
    gate written ``data(act = mamba)`` beside ``alpha = data(act = mamba)`` (same ``per``
    and ``rank``) means exactly that: it has no parameters of its own.
    """
    alpha, gate = gates.get("alpha"), gates[role]
    return (
        role != "alpha"
        and alpha is not None
        and gate.mode == alpha.mode == "data"
        and gate.act == alpha.act == "mamba"
        and (gate.per, gate.rank) == (alpha.per, alpha.rank)
    )


def gate_width(gate: Gate, heads: int, dk: int) -> int:
    return heads * dk if gate.per == "channel" else heads


def add_gate_parameters(
    owner: nn.Module,
    role: str,
    gate: Gate,
    d_model: int,
    heads: int,
    dk: int,
    deep: bool,
    tied: bool = False,
) -> None:
    """Register the parameters of gate `role` on `owner` (names in the module docstring);
    none when ``tied`` (`shares_step`: the rate is alpha's step)."""
    if tied:
        return
    width = gate_width(gate, heads, dk)
    target = gate_target(role, gate, deep)
    mamba = gate.act == "mamba"
    if mamba:
        a_log, dt_bias = mamba_init(width)
        if role == "alpha":  # a mamba rate (lr, ...) is dt alone: no A
            owner.register_parameter(f"{role}_A_log", nn.Parameter(a_log))
        owner.register_parameter(f"{role}_dt_bias", nn.Parameter(dt_bias))
    init = 0.0 if mamba else _pre_activation(role, gate.act, target)
    if gate.mode == "data":
        proj = GateProjection(d_model, width, gate.rank, bias=not mamba)
        proj.set_bias(init)
        owner.add_module(f"{role}_proj", proj)
    elif gate.mode == "learned":
        owner.register_parameter(f"{role}_param", nn.Parameter(torch.full((width,), init)))
    else:
        owner.register_buffer(f"{role}_const", _const_values(gate, heads, dk), persistent=False)


def gate_values(
    owner: nn.Module, role: str, gate: Gate, x: Tensor, heads: int, tied: bool = False
) -> Tensor:
    """The gate for tokens ``x`` ``[B, T, d_model]``: ``[B, T, H]`` or ``[B, T, H, dk]``.

    ``tied`` (`shares_step`): the step ``dt`` of the ``alpha`` gate's parameters."""
    batch, length = x.shape[0], x.shape[1]
    if tied:
        step = owner.get_submodule("alpha_proj")(x) + owner.get_parameter("alpha_dt_bias")
        out = F.softplus(step)
        return out.reshape(batch, length, heads, -1) if gate.per == "channel" else out
    if gate.mode == "data":
        z = getattr(owner, f"{role}_proj")(x)
    elif gate.mode == "learned":
        z = getattr(owner, f"{role}_param").expand(batch, length, -1)
    else:
        z = getattr(owner, f"{role}_const").to(x.dtype).expand(batch, length, -1)
    if gate.mode == "const":
        out = torch.log(z) if role == "alpha" else z
    else:
        out = _activate(owner, role, gate, z)
    if gate.per == "channel":
        return out.reshape(batch, length, heads, -1)
    return out


def _activate(owner: nn.Module, role: str, gate: Gate, z: Tensor) -> Tensor:
    """``gate.act`` through `archdsl.memory.gates.activate` (log alpha for ``alpha``).

    One exception: a mamba-parametrised *rate* (lr, beta, delta) is Mamba2's step size
    ``dt = softplus(z + dt_bias)``, not a log-decay.
    """
    a_log = getattr(owner, f"{role}_A_log", None)
    dt_bias = getattr(owner, f"{role}_dt_bias", None)
    if gate.act == "mamba" and role != "alpha":
        assert dt_bias is not None
        return F.softplus(z + dt_bias)
    return activate(gate, z, decay=role == "alpha", A_log=a_log, dt_bias=dt_bias)


def _pre_activation(role: str, act: str | None, target: float) -> float:
    """The parameter / bias value at which the gate equals ``target`` (alpha: in its own
    space, as `activate` reads it: sigmoid, softplus or identity of the pre-activation)."""
    return inverse_activation(act, target)


def _const_values(gate: Gate, heads: int, dk: int) -> Tensor:
    """A const gate's values ``[H]`` or ``[H * dk]`` (a formula is evaluated per head)."""
    if gate.formula is not None:
        per_head = const_gate_values(gate, heads)
    elif gate.value is not None:
        per_head = torch.full((heads,), float(gate.value))
    else:
        raise ValueError("a const gate needs a value or a formula")
    if gate.per == "channel":
        return per_head.repeat_interleave(dk)
    return per_head
