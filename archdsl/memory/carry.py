"""What a memory carries from one call to the next, and its `MemoryState` encoding.

`Carry` is the working form used by the algorithms; `MemoryState` (state.py) is the
boundary form. Layout of ``MemoryState.extra`` (one list of tensors, in this order):

1. retention ``lq``: the accumulator A of each weight (Moneta); retention ``kl``: the
   log-space accumulator L of each weight (Memora; L = log W at every chunk end);
2. only when a call ended inside a mini-batch (batch > 1, T not a multiple of it): the
   chunk-start weights W0 of each weight (all gradients of a mini-batch are taken there),
   then a 0-dim int64 tensor with the number of tokens of that mini-batch already seen.

So a sequence may be split anywhere and continued with the returned state: the result
equals one call on the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.inner import layer_dims
from archdsl.memory.state import MemoryState


@dataclass
class Carry:
    """Mutable per-call state: every list has one tensor per weight, batched [B, H, ...]."""

    weights: list[Tensor]
    momentum: list[Tensor] | None
    acc: list[Tensor] | None
    chunk_start: list[Tensor] | None
    offset: int  # tokens of the current mini-batch already processed (0 <= offset < b)


def uses_accumulator(mem: Memory) -> bool:
    return mem.retention.kind in ("lq", "kl")


def weight_shapes(mem: Memory, B: int, H: int, dk: int, dv: int) -> list[tuple[int, ...]]:
    if mem.structure.kind == "vector":
        return [(B, H, dk)]
    return [(B, H, d_in, d_out) for d_in, d_out in layer_dims(mem.structure, dk, dv)]


def _check_shapes(what: str, tensors: list[Tensor], shapes: list[tuple[int, ...]]) -> None:
    got = [tuple(t.shape) for t in tensors]
    if got != shapes:
        raise ValueError(f"initial_state {what}: expected shapes {shapes}, got {got}")


def _initial_weights(
    mem: Memory, state: MemoryState | Tensor | None, shapes: list[tuple[int, ...]], like: Tensor
) -> MemoryState:
    if state is None:
        if mem.structure.kind == "mlp":
            raise ValueError(
                f"memory '{mem.name}': an mlp memory needs initial_state (its initial weights W0)"
            )
        zero = torch.zeros(shapes[0], dtype=like.dtype, device=like.device)
        return MemoryState(weights=(zero,))
    if isinstance(state, Tensor):
        if mem.structure.kind != "matrix":
            raise ValueError(
                f"memory '{mem.name}': a plain tensor initial_state is only accepted for the "
                "matrix memory; pass a MemoryState"
            )
        return MemoryState(weights=(state,))
    return state


def initial_carry(mem: Memory, state: MemoryState | Tensor | None, q: Tensor, v: Tensor) -> Carry:
    """The carry at the start of a call (zeros for matrix / vector memories by default)."""
    B, _, H, dk = q.shape
    shapes = weight_shapes(mem, B, H, dk, v.shape[-1])
    st = _initial_weights(mem, state, shapes, q)
    weights = list(st.weights)
    _check_shapes("weights", weights, shapes)
    momentum: list[Tensor] | None = None
    if mem.learner.kind == "momentum":
        momentum = (
            list(st.momentum) if st.momentum is not None else [torch.zeros_like(w) for w in weights]
        )
        _check_shapes("momentum", momentum, shapes)
    extra = list(st.extra)
    acc: list[Tensor] | None = None
    if uses_accumulator(mem):
        n = len(weights)
        acc = extra[:n] if extra else _fresh_accumulator(mem, weights)
        extra = extra[n:]
        _check_shapes("accumulator (extra)", acc, shapes)
    if not extra:
        return Carry(weights, momentum, acc, None, 0)
    chunk_start, offset_t = extra[:-1], extra[-1]
    _check_shapes("chunk-start weights (extra)", chunk_start, shapes)
    offset = int(offset_t.item())
    if not 0 < offset < mem.batch:
        raise ValueError(
            f"initial_state: mini-batch offset {offset} out of range for b={mem.batch}"
        )
    return Carry(weights, momentum, acc, chunk_start, offset)


def _fresh_accumulator(mem: Memory, weights: list[Tensor]) -> list[Tensor]:
    """Moneta starts with A = W0; Memora with L = log W0 (so W0 must be positive)."""
    if mem.retention.kind == "lq":
        return list(weights)
    return [torch.log(w) for w in weights]


def final_state(carry: Carry) -> MemoryState:
    """The boundary form of a carry (see the module doc for ``extra``)."""
    extra: list[Tensor] = list(carry.acc) if carry.acc is not None else []
    if carry.offset > 0:
        assert carry.chunk_start is not None
        device = carry.weights[0].device
        extra += list(carry.chunk_start) + [torch.tensor(carry.offset, device=device)]
    momentum = tuple(carry.momentum) if carry.momentum is not None else None
    return MemoryState(weights=tuple(carry.weights), momentum=momentum, extra=tuple(extra))
