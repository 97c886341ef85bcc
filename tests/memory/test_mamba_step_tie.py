"""Mamba2's step tie: with ``alpha`` and ``lr`` both ``data(act = mamba)``, the write rate
is the decay's own step ``dt`` (one projection), as in the paper:
``dt = softplus(w . x + dt_bias)``, ``log alpha = -exp(A_log) dt``, ``lr = dt``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.layer import MemoryLayer

HEADS, D_MODEL = 2, 8


def _memory(lr_act: str) -> Memory:
    return Memory(
        name="m",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="mamba")),
        learner=Learner(kind="gd", lr=Gate(mode="data", act=lr_act)),
    )


def test_mamba_rate_is_the_decay_step() -> None:
    torch.manual_seed(0)
    layer = MemoryLayer(_memory("mamba"), d_model=D_MODEL, heads=HEADS).double()
    names = dict(layer.named_parameters())
    assert not any(n.startswith("lr_") for n in names), "the tied rate has no parameters"
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    inputs, _ = layer._core_inputs(x, layer.initial_state(2).conv)
    # independently: Mamba2's dt from the alpha gate's parameters
    z = x @ names["alpha_proj.weight"].T
    dt = F.softplus(z + names["alpha_dt_bias"])
    torch.testing.assert_close(inputs.lr, dt)
    torch.testing.assert_close(inputs.decay, -names["alpha_A_log"].exp() * dt)


def test_softplus_rate_stays_separate() -> None:
    layer = MemoryLayer(_memory("softplus"), d_model=D_MODEL, heads=HEADS)
    assert "lr_proj.weight" in dict(layer.named_parameters())
