"""Mixers and memories that compute the same thing share one function.

A semiseparable mixer with scalar decay per head is Mamba2's memory; a causal low-rank
mixer is linear attention. Both mixers must run through the very function the memory
lowering table selects (`chunked_gated_linear`), and give bit-identical outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archdsl.mixers.ssd as ssd_module
from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.rules import memory_function
from archdsl.mixers.lowrank import lowrank_mix
from archdsl.mixers.semiseparable import semiseparable_mix

F64 = torch.float64
B, T, H, N, D = 2, 45, 3, 4, 5


def _memory(retention: Retention, lr: Gate) -> Memory:
    return Memory(
        name="mem",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=retention,
        learner=Learner(kind="gd", lr=lr),
    )


MAMBA2 = _memory(Retention(kind="decay", alpha=Gate(mode="data", act="mamba")), Gate(mode="data"))
LINEAR_ATTENTION = _memory(Retention(kind="none"), Gate(mode="const", value=1.0))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call the mixers make to the memory's chunked function."""
    seen: list[str] = []
    real = ssd_module.chunked_gated_linear

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(real.__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssd_module, "chunked_gated_linear", spy)
    return seen


def test_memory_rule_and_mixer_use_the_same_function() -> None:
    assert memory_function(MAMBA2) is ssd_module.chunked_gated_linear
    assert memory_function(LINEAR_ATTENTION) is ssd_module.chunked_gated_linear


def test_semiseparable_mixer_is_mamba2_memory(calls: list[str]) -> None:
    x = torch.randn(B, T, H, D, dtype=F64)
    c, b = torch.randn(B, T, H, N, dtype=F64), torch.randn(B, T, H, N, dtype=F64)
    log_a = -F.softplus(torch.randn(B, T, H, dtype=F64))
    dt = F.softplus(torch.randn(B, T, H, dtype=F64))
    mixed = semiseparable_mix(x, c=c, b=b, log_a=log_a, lr=dt, causal=True)
    assert calls == ["chunked_gated_linear"]
    memory, _ = memory_function(MAMBA2)(MAMBA2, c, b, x, lr=dt, decay=log_a, scale=1.0)
    assert torch.equal(mixed, memory)


def test_causal_lowrank_mixer_is_linear_attention(calls: list[str]) -> None:
    x = torch.randn(B, T, H, D, dtype=F64)
    q, k = torch.randn(B, T, H, N, dtype=F64), torch.randn(B, T, H, N, dtype=F64)
    mixed = lowrank_mix(x, q=q, k=k, scale=N**-0.5, causal=True)
    assert calls == ["chunked_gated_linear"]
    ones = torch.ones(B, T, H, dtype=F64)
    memory, _ = memory_function(LINEAR_ATTENTION)(LINEAR_ATTENTION, q, k, x, lr=ones)
    assert torch.equal(mixed, memory)
