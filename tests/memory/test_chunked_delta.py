"""chunked_delta_rule against explicit token loops written here, and against the reference.

Delta rule, decay before: W' = D_t W_{t-1} (D = alpha I or diag(alpha)), then n (1 unless
steps(n)) gradient steps of 1/2 ||W^T k - v||^2: W <- W - (lr k) (k^T W - v^T); implicit
(Longhorn): one step with lr / (1 + lr |k|^2). Read o_t = (scale q_t) W_t.
"""

from __future__ import annotations

import doctest
from typing import Any

import pytest
import torch
from chunked_checks import (
    LONG,
    check_long_sequence_stable,
    check_split_and_continue,
    stable_inputs,
)
from torch import Tensor

import archdsl.memory.chunked_delta as chunked_delta_module
from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_delta import chunked_delta_rule
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

F64 = torch.float64
B, T, H, DK, DV = 2, 37, 2, 8, 6


def make_memory(learner: str = "gd", n: int = 1, decayed: bool = True) -> Memory:
    retention = (
        Retention(kind="decay", alpha=Gate(mode="data")) if decayed else Retention(kind="none")
    )
    return Memory(
        name="mem",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="l2"),
        retention=retention,
        learner=Learner(kind=learner, n=n, lr=Gate(mode="data", act="sigmoid")),  # type: ignore[arg-type]
    )


def naive_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    decay: Tensor | None,
    scale: float,
    learner: str = "gd",
    n: int = 1,
    w0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The token loop, written directly from the recurrence."""
    bsz, t_len, h, dk = q.shape
    w = w0 if w0 is not None else q.new_zeros(bsz, h, dk, v.shape[-1])
    outs = []
    for t in range(t_len):
        if decay is not None:
            gate = decay[:, t, :, :, None] if decay.dim() == 4 else decay[:, t, :, None, None]
            w = torch.exp(gate) * w  # forget first (key rows, per channel)
        k_t = k[:, t]
        rate = lr[:, t] if lr.dim() == 4 else lr[:, t, :, None]
        if learner == "implicit":
            rate = rate / (1.0 + rate * (k_t * k_t).sum(-1, keepdim=True))
        for _ in range(n if learner == "steps" else 1):
            err = torch.einsum("bhk,bhkv->bhv", k_t, w) - v[:, t]
            w = w - (rate * k_t)[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", scale * q[:, t], w))
    return torch.stack(outs, dim=1), w


def random_inputs(
    gen: torch.Generator, decay_per: str | None, lr_per: str, t_len: int = T
) -> dict[str, Tensor | None]:
    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    decay = None
    if decay_per is not None:
        d_shape = (B, t_len, H, DK) if decay_per == "channel" else (B, t_len, H)
        decay = torch.nn.functional.logsigmoid(rnd(*d_shape) + 1.0)
    lr_shape = (B, t_len, H, DK) if lr_per == "channel" else (B, t_len, H)
    return {
        "q": rnd(B, t_len, H, DK),
        # unit keys and lr in (0, 1): the contractive regime the models run in
        "k": torch.nn.functional.normalize(rnd(B, t_len, H, DK), dim=-1),
        "v": rnd(B, t_len, H, DV),
        "lr": torch.rand(*lr_shape, generator=gen, dtype=F64),
        "decay": decay,
    }


CASES = [
    (learner, n, decay_per, lr_per)
    for learner, n in (("gd", 1), ("implicit", 1), ("steps", 3))
    for decay_per in (None, "head", "channel")
    for lr_per in ("head", "channel")
    if not (learner == "implicit" and lr_per == "channel")
]


def run_both(
    fn: object,
    mem: Memory,
    leaves: dict[str, Tensor],
    probes: tuple[Tensor, Tensor],
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Output, final state and the gradients of a random functional of both."""
    a = {n: t.clone().requires_grad_() for n, t in leaves.items()}
    extra = {} if chunk is None else {"chunk": chunk}
    o, state = fn(  # type: ignore[operator]
        mem,
        a["q"],
        a["k"],
        a["v"],
        lr=a["lr"],
        decay=a.get("decay"),
        initial_state=MemoryState((a["w0"],)),
        output_final_state=True,
        **extra,
    )
    assert state is not None
    loss = (o * probes[0]).sum() + (state.weights[0] * probes[1]).sum()
    return o, state.weights[0], torch.autograd.grad(loss, list(a.values()))


def leaves_and_probes(
    seed: int, decay_per: str | None, lr_per: str
) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = random_inputs(gen, decay_per, lr_per)
    w0 = torch.randn(B, H, DK, DV, generator=gen, dtype=F64)
    leaves = {n: t for n, t in {**x, "w0": w0}.items() if t is not None}
    probes = (torch.randn(B, T, H, DV, generator=gen, dtype=F64), torch.randn_like(w0))
    return leaves, probes


def assert_same(
    got: tuple[Tensor, Tensor, tuple[Tensor, ...]],
    want: tuple[Tensor, Tensor, tuple[Tensor, ...]],
    names: list[str],
) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)
    for name, g_got, g_want in zip(names, got[2], want[2]):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize(("learner", "n", "decay_per", "lr_per"), CASES)
def test_matches_token_loop(learner: str, n: int, decay_per: str | None, lr_per: str) -> None:
    leaves, probes = leaves_and_probes(1, decay_per, lr_per)
    mem = make_memory(learner, n, decayed=decay_per is not None)
    got = run_both(chunked_delta_rule, mem, leaves, probes, chunk=16)

    def loop(mem: Memory, q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> tuple[Tensor, object]:
        o, w = naive_delta_rule(
            q, k, v, kw["lr"], kw["decay"], DK**-0.5, learner, n, kw["initial_state"].weights[0]
        )
        return o, MemoryState((w,))

    assert_same(got, run_both(loop, mem, leaves, probes), list(leaves))


@pytest.mark.parametrize(("learner", "n", "decay_per", "lr_per"), CASES)
def test_matches_reference(learner: str, n: int, decay_per: str | None, lr_per: str) -> None:
    leaves, probes = leaves_and_probes(2, decay_per, lr_per)
    mem = make_memory(learner, n, decayed=decay_per is not None)
    got = run_both(chunked_delta_rule, mem, leaves, probes)
    assert_same(got, run_both(memory_reference, mem, leaves, probes), list(leaves))


@pytest.mark.parametrize("decay_per", ["head", "channel"])
def test_chunk_size_changes_nothing(decay_per: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x = random_inputs(gen, decay_per, "head")
    outs = [
        chunked_delta_rule(
            make_memory("steps", 2), x["q"], x["k"], x["v"], lr=x["lr"], decay=x["decay"], chunk=c
        )[0]
        for c in (1, 4, 16, 128)
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("learner", ["gd", "steps"])
def test_split_and_continue(learner: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = random_inputs(gen, "channel", "head")
    mem = make_memory(learner, 2)

    check_split_and_continue(chunked_delta_rule, mem, x, 19)


def test_plain_tensor_initial_state() -> None:
    gen = torch.Generator().manual_seed(5)
    x = random_inputs(gen, "head", "head")
    w0 = torch.randn(B, H, DK, DV, generator=gen, dtype=F64)
    args = (make_memory(), x["q"], x["k"], x["v"])
    o1, _ = chunked_delta_rule(*args, lr=x["lr"], decay=x["decay"], initial_state=w0)
    o2, _ = chunked_delta_rule(
        *args, lr=x["lr"], decay=x["decay"], initial_state=MemoryState((w0,))
    )
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)


def test_implicit_rejects_per_channel_lr() -> None:
    gen = torch.Generator().manual_seed(6)
    x = random_inputs(gen, None, "channel")
    with pytest.raises(ValueError, match="per-head lr"):
        chunked_delta_rule(
            make_memory("implicit", decayed=False), x["q"], x["k"], x["v"], lr=x["lr"]
        )


def test_docstring_example() -> None:
    result = doctest.testmod(chunked_delta_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------
# Stability: strong decays over long sequences, in float32
# ---------------------------------------------------------------------------------------


def run_chunked(x: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    y = {n: t.to(dtype) for n, t in x.items()}
    o, _ = chunked_delta_rule(make_memory(), y["q"], y["k"], y["v"], lr=y["lr"], decay=y["decay"])
    return o


def run_loop(x: dict[str, Tensor]) -> Tensor:
    return naive_delta_rule(x["q"], x["k"], x["v"], x["lr"], x["decay"], 16**-0.5)[0]


@pytest.mark.parametrize("log_alpha", [-5.0, -20.0])
@pytest.mark.parametrize("per", ["head", "channel"])
def test_long_sequence_with_strong_decay_is_stable(log_alpha: float, per: str) -> None:
    x = stable_inputs(log_alpha, per, LONG, unit_keys=True)
    check_long_sequence_stable(x, run_chunked, run_loop)
