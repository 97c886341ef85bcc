"""chunked_gated_linear against explicit token loops written here from the recurrence.

W_t = alpha_t W_{t-1} + (lr_t k_t) v_t^T (alpha per head or per key channel), o_t =
(scale q_t) W_t; vector: w_t = alpha_t w_{t-1} + lr_t k_t v_t, o_t = scale q_t w_t.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from chunked_checks import (
    LONG,
    check_long_sequence_stable,
    check_split_and_continue,
    stable_inputs,
)
from torch import Tensor

import archdsl.memory.chunked_linear as chunked_linear_module
from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_linear import chunked_gated_linear, decay_floor
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

F64 = torch.float64
B, T, H, DK, DV = 2, 37, 2, 8, 6


def make_memory(
    structure: str = "matrix",
    decayed: bool = True,
    tie_key: bool = False,
    scale: float | None = None,
) -> Memory:
    retention = (
        Retention(kind="decay", alpha=Gate(mode="data"), tie_key=tie_key)
        if decayed
        else Retention(kind="none")
    )
    return Memory(
        name="mem",
        structure=Structure(kind=structure),  # type: ignore[arg-type]
        bias=Bias(kind="dot"),
        retention=retention,
        learner=Learner(kind="gd", lr=Gate(mode="data", act="sigmoid")),
        features=Features(scale=scale),
    )


def naive_gated_linear(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    decay: Tensor | None,
    scale: float,
    vector: bool,
    w0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The token loop, written directly from the recurrence (no chunking, no log tricks)."""
    bsz, t_len, h, dk = q.shape
    dv = v.shape[-1]
    w = w0 if w0 is not None else q.new_zeros((bsz, h, dk) if vector else (bsz, h, dk, dv))
    outs = []
    for t in range(t_len):
        rate = lr[:, t] if lr.dim() == 4 else lr[:, t, :, None]
        write_key = rate * k[:, t]  # [B, H, dk]
        if decay is None:
            alpha = torch.ones_like(write_key)
        else:
            gate = decay[:, t] if decay.dim() == 4 else decay[:, t, :, None]
            alpha = torch.exp(gate).expand_as(write_key)
        if vector:
            w = alpha * w + write_key * v[:, t]
            outs.append(scale * q[:, t] * w)
        else:
            w = alpha[..., None] * w + write_key[..., :, None] * v[:, t, :, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", scale * q[:, t], w))
    return torch.stack(outs, dim=1), w


def random_inputs(
    gen: torch.Generator,
    decay_per: str | None,
    lr_per: str,
    vector: bool,
    t_len: int = T,
    dtype: torch.dtype = F64,
) -> dict[str, Tensor | None]:
    dv = DK if vector else DV

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    lr_shape = (B, t_len, H, DK) if lr_per == "channel" else (B, t_len, H)
    decay = None
    if decay_per is not None:
        d_shape = (B, t_len, H, DK) if decay_per == "channel" else (B, t_len, H)
        decay = torch.nn.functional.logsigmoid(rnd(*d_shape) + 1.0)
    return {
        "q": rnd(B, t_len, H, DK),
        "k": rnd(B, t_len, H, DK),
        "v": rnd(B, t_len, H, dv),
        "lr": torch.rand(*lr_shape, generator=gen, dtype=dtype),
        "decay": decay,
    }


CASES = [
    (structure, decay_per, lr_per)
    for structure in ("matrix", "vector")
    for decay_per in (None, "head", "channel")
    for lr_per in ("head", "channel")
]


@pytest.mark.parametrize(("structure", "decay_per", "lr_per"), CASES)
def test_forward_and_final_state_match_token_loop(
    structure: str, decay_per: str | None, lr_per: str
) -> None:
    gen = torch.Generator().manual_seed(1)
    x = random_inputs(gen, decay_per, lr_per, structure == "vector")
    dv = x["v"].shape[-1]  # type: ignore[union-attr]
    w0 = torch.randn(B, H, DK, *(() if structure == "vector" else (dv,)), generator=gen, dtype=F64)
    o, state = chunked_gated_linear(
        make_memory(structure, decayed=decay_per is not None),
        x["q"],
        x["k"],
        x["v"],
        lr=x["lr"],
        decay=x["decay"],
        initial_state=MemoryState((w0,)),
        output_final_state=True,
        chunk=16,
    )
    o_ref, w_ref = naive_gated_linear(
        x["q"], x["k"], x["v"], x["lr"], x["decay"], DK**-0.5, structure == "vector", w0
    )
    assert state is not None
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.weights[0], w_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("structure", "decay_per", "lr_per"), CASES)
def test_gradients_match_token_loop(structure: str, decay_per: str | None, lr_per: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = random_inputs(gen, decay_per, lr_per, structure == "vector")
    dv = x["v"].shape[-1]  # type: ignore[union-attr]
    w0 = torch.randn(B, H, DK, *(() if structure == "vector" else (dv,)), generator=gen, dtype=F64)
    leaves = {name: t for name, t in {**x, "w0": w0}.items() if t is not None}
    o_probe = torch.randn(B, T, H, dv, generator=gen, dtype=F64)
    w_probe = torch.randn_like(w0)

    def grads(fn_out: tuple[Tensor, Tensor], inputs: dict[str, Tensor]) -> tuple[Tensor, ...]:
        loss = (fn_out[0] * o_probe).sum() + (fn_out[1] * w_probe).sum()
        return torch.autograd.grad(loss, list(inputs.values()))

    a = {n: t.clone().requires_grad_() for n, t in leaves.items()}
    o, state = chunked_gated_linear(
        make_memory(structure, decayed=decay_per is not None),
        a["q"],
        a["k"],
        a["v"],
        lr=a["lr"],
        decay=a.get("decay"),
        initial_state=a["w0"],
        output_final_state=True,
        chunk=16,
    )
    assert state is not None
    got = grads((o, state.weights[0]), a)
    r = {n: t.clone().requires_grad_() for n, t in leaves.items()}
    ref = naive_gated_linear(
        r["q"], r["k"], r["v"], r["lr"], r.get("decay"), DK**-0.5, structure == "vector", r["w0"]
    )
    want = grads(ref, r)
    for name, g_got, g_want in zip(a, got, want):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize(("structure", "decay_per", "lr_per"), CASES)
def test_forward_state_and_gradients_match_reference(
    structure: str, decay_per: str | None, lr_per: str
) -> None:
    """Against the definitional token loop of archdsl.memory.reference (torch.func grads)."""
    gen = torch.Generator().manual_seed(8)
    x = random_inputs(gen, decay_per, lr_per, structure == "vector")
    dv = x["v"].shape[-1]  # type: ignore[union-attr]
    w0 = torch.randn(B, H, DK, *(() if structure == "vector" else (dv,)), generator=gen, dtype=F64)
    leaves = {name: t for name, t in {**x, "w0": w0}.items() if t is not None}
    o_probe = torch.randn(B, T, H, dv, generator=gen, dtype=F64)
    w_probe = torch.randn_like(w0)
    mem = make_memory(structure, decayed=decay_per is not None)
    results = []
    for fn in (chunked_gated_linear, memory_reference):
        a = {n: t.clone().requires_grad_() for n, t in leaves.items()}
        o, state = fn(
            mem,
            a["q"],
            a["k"],
            a["v"],
            lr=a["lr"],
            decay=a.get("decay"),
            initial_state=MemoryState((a["w0"],)),
            output_final_state=True,
        )
        assert state is not None
        loss = (o * o_probe).sum() + (state.weights[0] * w_probe).sum()
        results.append((o, state.weights[0], torch.autograd.grad(loss, list(a.values()))))
    (o, w, grads), (o_ref, w_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-10)
    for name, g_got, g_want in zip(leaves, grads, grads_ref):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize("structure", ["matrix", "vector"])
@pytest.mark.parametrize("decay_per", ["head", "channel"])
def test_chunk_size_changes_nothing(structure: str, decay_per: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x = random_inputs(gen, decay_per, "head", structure == "vector")
    mem = make_memory(structure)
    outs = [
        chunked_gated_linear(mem, x["q"], x["k"], x["v"], lr=x["lr"], decay=x["decay"], chunk=c)[0]
        for c in (1, 4, 16, 64)
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("structure", ["matrix", "vector"])
def test_split_and_continue(structure: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = random_inputs(gen, "channel", "head", structure == "vector")
    mem = make_memory(structure)

    check_split_and_continue(chunked_gated_linear, mem, x, 20)


def test_tie_key_writes_one_minus_alpha() -> None:
    gen = torch.Generator().manual_seed(5)
    x = random_inputs(gen, "channel", "head", vector=False)
    o, _ = chunked_gated_linear(
        make_memory(tie_key=True), x["q"], x["k"], x["v"], lr=x["lr"], decay=x["decay"]
    )
    tied_k = 1.0 - torch.exp(x["decay"])  # type: ignore[arg-type]
    o_ref, _ = naive_gated_linear(x["q"], tied_k, x["v"], x["lr"], x["decay"], DK**-0.5, False)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)


def test_scale_argument_overrides_memory_scale() -> None:
    gen = torch.Generator().manual_seed(6)
    x = random_inputs(gen, "head", "head", vector=False)
    args = (x["q"], x["k"], x["v"])
    from_mem, _ = chunked_gated_linear(make_memory(scale=0.3), *args, lr=x["lr"], decay=x["decay"])
    explicit, _ = chunked_gated_linear(
        make_memory(scale=7.0), *args, lr=x["lr"], decay=x["decay"], scale=0.3
    )
    o_ref, _ = naive_gated_linear(*args, x["lr"], x["decay"], 0.3, False)
    torch.testing.assert_close(from_mem, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(explicit, o_ref, rtol=1e-10, atol=1e-10)


def test_rejects_bad_gate_shape() -> None:
    q = torch.zeros(1, 5, 2, 4)
    with pytest.raises(ValueError, match="decay"):
        chunked_gated_linear(
            make_memory(), q, q, q, lr=torch.ones(1, 5, 2), decay=torch.zeros(1, 5, 3)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_decay_floor_is_below_precision_and_keeps_products_normal(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    floor = decay_floor(dtype)
    assert math.exp(floor) < 1e-3 * info.eps
    assert math.exp(3 * floor) > info.tiny
    assert decay_floor(torch.float16) == float("-inf")


def test_docstring_example() -> None:
    result = doctest.testmod(chunked_linear_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------
# Stability: strong decays over long sequences, in float32
# ---------------------------------------------------------------------------------------


def run_chunked(x: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    y = {n: t.to(dtype) for n, t in x.items()}
    o, _ = chunked_gated_linear(make_memory(), y["q"], y["k"], y["v"], lr=y["lr"], decay=y["decay"])
    return o


def run_loop(x: dict[str, Tensor]) -> Tensor:
    return naive_gated_linear(x["q"], x["k"], x["v"], x["lr"], x["decay"], 16**-0.5, False)[0]


@pytest.mark.parametrize("log_alpha", [-5.0, -20.0])
@pytest.mark.parametrize("per", ["head", "channel"])
def test_long_sequence_with_strong_decay_is_stable(log_alpha: float, per: str) -> None:
    x = stable_inputs(log_alpha, per, LONG, unit_keys=False)
    check_long_sequence_stable(x, run_chunked, run_loop)
