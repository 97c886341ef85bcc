"""The functional core of a memory: ``core_for_memory(mem)`` -> a kernel-level function.

The returned function follows the conventions of the field (layout ``[B, T, H, D]``,
decays as log alpha, ``initial_state`` / ``output_final_state``) and fills in what the
spec fixes: a gate given as None is taken from the spec when it is const (a value, or a
formula over ``head`` / ``heads`` evaluated for the H of the inputs); floats are
accepted for lr, momentum and delta (and decay, as log alpha). Learned and data gates
must be passed in (see `archdsl.memory.gates` to make them). For the matrix memory the
state crosses as a plain ``[B, H, dk, dv]`` tensor unless there is more than W to carry
(momentum, an accumulator, an open mini-batch), then as a `MemoryState`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from archdsl.ir.memory import Gate, Memory
from archdsl.memory.gates import const_gate
from archdsl.memory.inputs import check_arguments
from archdsl.memory.rules import memory_function
from archdsl.memory.state import MemoryState

GateArg = Tensor | float | None
CoreFn = Callable[..., tuple[Tensor, MemoryState | Tensor | None]]


def core_for_memory(mem: Memory, backend: str = "torch") -> CoreFn:
    """``f(q, k, v, *, lr, decay, momentum, delta, scale, initial_state,
    output_final_state) -> (o [B, T, H, dv], final_state)`` computing `mem` on ``backend``
    ('reference' or 'torch'), dispatched through `archdsl.memory.rules.memory_function`."""
    if backend not in ("reference", "torch"):
        raise ValueError(f"backend '{backend}' is not one of 'reference', 'torch'")
    impl = memory_function(mem, backend)

    def run(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        lr: GateArg = None,
        decay: GateArg = None,
        momentum: GateArg = None,
        delta: GateArg = None,
        scale: float | None = None,
        initial_state: MemoryState | Tensor | None = None,
        output_final_state: bool = False,
    ) -> tuple[Tensor, MemoryState | Tensor | None]:
        if q.dim() != 4:
            raise ValueError(f"memory '{mem.name}': q must be [B, T, H, dk], got {tuple(q.shape)}")
        gates = _fill_gates(mem, q, lr=lr, decay=decay, momentum=momentum, delta=delta)
        check_arguments(mem, q, k, v, **gates)
        o, state = impl(
            mem,
            q,
            k,
            v,
            **gates,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
        )
        return o, _boundary_state(mem, state) if output_final_state else None

    run.__doc__ = f"Functional core of memory '{mem.name}' ({backend} backend)."
    return run


def _fill_gates(mem: Memory, q: Tensor, **given: GateArg) -> dict[str, Any]:
    """Each gate the spec uses: the argument (a float becomes ``[B, T, H]``), else the
    spec's const; None for gates the spec does not use."""
    specs: dict[str, Gate | None] = {
        "lr": mem.learner.lr,
        "decay": mem.retention.alpha if mem.retention.kind != "none" else None,
        "momentum": mem.learner.beta if mem.learner.kind == "momentum" else None,
        "delta": mem.bias.delta if mem.bias.kind == "huber" else None,
    }
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        out[name] = _one_gate(mem, name, spec, given[name], q)
    return out


def _one_gate(mem: Memory, name: str, spec: Gate | None, value: GateArg, q: Tensor) -> GateArg:
    B, T, H = q.shape[:3]
    if isinstance(value, Tensor):
        return value
    if value is not None:
        return torch.full((B, T, H), float(value), dtype=q.dtype, device=q.device)
    if spec is None:
        return None
    if spec.mode != "const":
        raise ValueError(
            f"memory '{mem.name}': {name} is a {spec.mode} gate; pass its values "
            f"({name}=[B, T, H] or [B, T, H, dk] tensor)"
        )
    return const_gate(spec, (B, T, H), decay=name == "decay", dtype=q.dtype, device=q.device)


def _boundary_state(mem: Memory, state: MemoryState | Tensor | None) -> MemoryState | Tensor | None:
    """A matrix memory with nothing but W to carry crosses as the plain W tensor."""
    if not isinstance(state, MemoryState) or mem.structure.kind != "matrix":
        return state
    if state.momentum is None and not state.extra:
        return state.weights[0]
    return state
