"""Checks shared by the chunked matrix memories' tests: split-and-continue through the
carried state, and strong decays over a long sequence in float32 (finite, and equal to
float64 at both ends and to the token loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.state import MemoryState

F64 = torch.float64
LONG = 16384

Inputs = dict[str, Tensor]


def check_split_and_continue(
    core: Callable[..., tuple[Tensor, MemoryState | None]],
    mem: Memory,
    x: dict[str, Any],
    split: int,
) -> None:
    """Two calls (``:split``, then ``split:`` from the carried state) equal one full call
    of ``core(mem, q, k, v, lr=, decay=, ...)`` (outputs and final state)."""
    length = x["q"].shape[1]

    def run(lo: int, hi: int, state: MemoryState | None) -> tuple[Tensor, MemoryState | None]:
        sl = {n: (t[:, lo:hi] if t is not None else None) for n, t in x.items()}
        return core(
            mem,
            sl["q"],
            sl["k"],
            sl["v"],
            lr=sl["lr"],
            decay=sl["decay"],
            initial_state=state,
            output_final_state=True,
            chunk=8,
        )

    full, full_state = run(0, length, None)
    first, mid_state = run(0, split, None)
    second, end_state = run(split, length, mid_state)
    assert full_state is not None and end_state is not None
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end_state.weights[0], full_state.weights[0])


def stable_inputs(log_alpha: float, per: str, t_len: int, unit_keys: bool) -> Inputs:
    """One head, width 16; ``per = channel``: strengths mixed per channel and token
    between ``log_alpha / 2`` and ``log_alpha``. ``unit_keys``: l2-normalised keys (the
    delta rule's stable regime)."""
    gen = torch.Generator().manual_seed(7)
    shape = (1, t_len, 1, 16) if per == "channel" else (1, t_len, 1)
    if per == "channel":
        decay = log_alpha * (0.5 + 0.5 * torch.rand(*shape, generator=gen, dtype=F64))
    else:
        decay = torch.full(shape, log_alpha, dtype=F64)
    q = torch.randn(1, t_len, 1, 16, generator=gen, dtype=F64)
    k = torch.randn(1, t_len, 1, 16, generator=gen, dtype=F64)
    if unit_keys:
        k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(1, t_len, 1, 16, generator=gen, dtype=F64)
    lr = torch.rand(1, t_len, 1, generator=gen, dtype=F64)
    return {"q": q, "k": k, "v": v, "lr": lr, "decay": decay}


def check_long_sequence_stable(
    x: Inputs,
    run: Callable[[Inputs, torch.dtype], Tensor],
    loop: Callable[[Inputs], Tensor],
) -> None:
    """``run(x, dtype)``: the chunked outputs; ``loop(x)``: the float64 token loop."""
    o = run(x, torch.float32)
    assert torch.isfinite(o).all()
    # prefix: the same computation in float64 at T = 2048
    head = {n: t[:, :2048] for n, t in x.items()}
    torch.testing.assert_close(o[:, :2048].double(), run(head, F64), rtol=1e-4, atol=1e-4)
    # tail: the state has crossed 14000 strong decays; in float64 a fresh start 256 tokens
    # earlier gives the same outputs (exp(log_alpha / 2 * 256) is far below float32
    # precision)
    tail = {n: t[:, -2048 - 256 :] for n, t in x.items()}
    torch.testing.assert_close(o[:, -2048:].double(), run(tail, F64)[:, 256:], rtol=1e-4, atol=1e-4)
    # and the plain token loop at T = 512
    short = {n: t[:, :512] for n, t in x.items()}
    torch.testing.assert_close(o[:, :512].double(), loop(short), rtol=1e-4, atol=1e-4)
