"""Lowering rules for memories: which algorithm computes a given Memory.

A rule matches a family of memories (a predicate over the IR) and names the function
that computes it. The table is ordered: the first rule that matches wins. Every rule's
function has the signature of `archdsl.memory.reference.memory_reference`:

    run(mem, q, k, v, *, lr, decay, momentum, delta, scale, initial_state,
        output_final_state) -> (o, MemoryState | None)

with q, k ``[B, T, H, dk]``, v ``[B, T, H, dv]``, and gates already materialised as
tensors: ``lr`` ``[B, T, H]`` (or ``[B, T, H, dk]`` per channel), ``decay`` = log alpha
(``<= 0``), ``[B, T, H]`` or ``[B, T, H, dk]``, or None; ``momentum`` ``[B, T, H]`` or
None; ``delta`` (Huber threshold) ``[B, T, H]`` or None; ``scale`` a float applied to q.
A memory no rule matches falls back, loudly, to the reference.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archdsl.ir.memory import Memory


@dataclass(frozen=True)
class MemoryRule:
    """One row of the lowering table: a family of memories and the function for it."""

    name: str
    family: str
    matches: Callable[[Memory], bool]
    target: str  # "module:function", imported on first use (keeps `check` torch-free)

    def load(self) -> Callable[..., Any]:
        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def _is_linear_read(mem: Memory) -> bool:
    return mem.structure.kind in ("matrix", "vector") and mem.batch == 1


def _gated_linear(mem: Memory) -> bool:
    return (
        _is_linear_read(mem)
        and mem.bias.kind == "dot"
        and mem.retention.kind in ("none", "decay")
        and mem.learner.kind == "gd"
    )


def _delta_rule(mem: Memory) -> bool:
    return (
        mem.structure.kind == "matrix"
        and mem.batch == 1
        and mem.bias.kind == "l2"
        and mem.retention.kind in ("none", "decay")
        and mem.retention.when == "before"
        and mem.learner.kind in ("gd", "implicit", "steps")
    )


def _minibatch_ttt(mem: Memory) -> bool:
    return mem.structure.kind == "mlp" or mem.batch > 1 or mem.learner.kind == "momentum"


RULES: tuple[MemoryRule, ...] = (
    MemoryRule(
        "chunked_gated_linear",
        "gated linear (dot bias, optional decay per head or key channel)",
        _gated_linear,
        "archdsl.memory.chunked_linear:chunked_gated_linear",
    ),
    MemoryRule(
        "chunked_delta_rule",
        "delta rule (l2 bias, matrix memory; WY/UT form)",
        _delta_rule,
        "archdsl.memory.chunked_delta:chunked_delta_rule",
    ),
    MemoryRule(
        "chunked_minibatch_ttt",
        "deep memories / mini-batch test-time training",
        _minibatch_ttt,
        "archdsl.memory.chunked_ttt:chunked_minibatch_ttt",
    ),
)

REFERENCE_TARGET = "archdsl.memory.reference:memory_reference"

# Rules with a generated Triton kernel: rule name -> factory(mem) of the rule's function.
TRITON_RULES = {"chunked_gated_linear": "archdsl.runtime.triton_entry:memory_entry"}


def select_rule(mem: Memory) -> MemoryRule | None:
    """The first rule of `RULES` that matches `mem`, or None (reference fallback)."""
    for rule in RULES:
        if rule.matches(mem):
            return rule
    return None


def lowering_name(mem: Memory) -> str:
    rule = select_rule(mem)
    return rule.name if rule else "reference (no rule)"


def memory_function(mem: Memory, backend: str = "torch") -> Callable[..., Any]:
    """The function that computes `mem` on `backend` ('reference', 'torch' or 'triton')."""
    ref = MemoryRule("reference", "definitional", lambda _m: True, REFERENCE_TARGET)
    if backend == "reference":
        return ref.load()
    rule = select_rule(mem)
    if backend == "triton":
        if rule is not None and rule.name in TRITON_RULES:
            module, _, func = TRITON_RULES[rule.name].partition(":")
            return getattr(importlib.import_module(module), func)(mem)  # type: ignore[no-any-return]
        warnings.warn(
            f"memory '{mem.name}': no generated Triton kernel for rule "
            f"'{rule.name if rule else 'reference'}'; using the torch path",
            stacklevel=2,
        )
    if rule is None:
        warnings.warn(
            f"memory '{mem.name}': no lowering rule matches "
            f"({mem.structure.kind}, {mem.bias.kind}, {mem.retention.kind}, "
            f"{mem.learner.kind}, batch={mem.batch}); falling back to the reference",
            stacklevel=2,
        )
        return ref.load()
    return rule.load()
