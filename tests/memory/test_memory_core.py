"""core_for_memory and the gate helpers: spec-fixed gates, floats, states, shape errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_reference_helpers import DT, gates, make_memory, rand

from archdsl.ir.expr import BinOp, Name, Neg, Num
from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.core import core_for_memory
from archdsl.memory.gates import activate, const_gate, const_values, eval_expr, learned_gate
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

# RetNet: alpha_h = 1 - 2 ** (-5 - head)
RETNET_FORMULA = BinOp(
    op="-",
    lhs=Num(value=1),
    rhs=BinOp(
        op="**",
        lhs=Num(value=2),
        rhs=BinOp(op="-", lhs=Neg(operand=Num(value=5)), rhs=Name(name="head")),
    ),
)


def retnet() -> Memory:
    return Memory(
        name="retnet",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=Retention(kind="decay", alpha=Gate(mode="const", formula=RETNET_FORMULA)),
        learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)),
    )


def test_eval_expr_arithmetic() -> None:
    e = BinOp(
        op="//", lhs=BinOp(op="*", lhs=Name(name="heads"), rhs=Num(value=3)), rhs=Num(value=2)
    )
    assert eval_expr(e, {"heads": 5}) == 7.0
    assert eval_expr(BinOp(op="%", lhs=Num(value=7), rhs=Num(value=4)), {}) == 3.0
    with pytest.raises(ValueError, match="unknown name"):
        eval_expr(Name(name="d_model"), {"head": 0})


@pytest.mark.parametrize("H", [2, 3, 5])
def test_retnet_formula_gates_adapt_to_heads(H: int) -> None:
    B, T, D = 1, 6, 4
    q, k, v = rand(B, T, H, D, seed=0), rand(B, T, H, D), rand(B, T, H, D)
    o, state = core_for_memory(retnet())(q, k, v, output_final_state=True)
    assert isinstance(state, torch.Tensor) and state.shape == (B, H, D, D)
    # independent closed form: o_t = sum_{s<=t} gamma_h^(t-s) (q_t . k_s) v_s / sqrt(D)
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=DT)
    t_idx = torch.arange(T)
    power = (t_idx[:, None] - t_idx[None, :]).clamp_min(0).to(DT)
    mask = (t_idx[:, None] >= t_idx[None, :]).to(DT)
    decay = gamma[:, None, None] ** power * mask  # [H, T, S]
    scores = torch.einsum("bthd,bshd->bhts", q, k) * D**-0.5 * decay
    torch.testing.assert_close(o, torch.einsum("bhts,bshe->bthe", scores, v), atol=1e-12, rtol=0)
    logs = const_gate(retnet().retention.alpha, (B, T, H), decay=True, dtype=DT)  # type: ignore[arg-type]
    torch.testing.assert_close(logs[0, 0], torch.log(gamma))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_float_gates_equal_tensor_gates(backend: str) -> None:
    B, T, H, D = 2, 7, 2, 4
    mem = make_memory("mlp", "l2", "decay", "momentum", batch=3, s_expand=1.0, r_when="after")
    q, k, v = rand(B, T, H, D, seed=1), rand(B, T, H, D), rand(B, T, H, D)
    st = MemoryState((0.3 * rand(B, H, D, D), 0.3 * rand(B, H, D, D)))
    g = gates(B, T, H)
    run = core_for_memory(mem, backend)
    o1, _ = run(q, k, v, lr=0.1, decay=g["decay"], momentum=0.9, initial_state=st)
    full = torch.full((B, T, H), 0.1, dtype=DT)
    o2, _ = memory_reference(
        mem, q, k, v, lr=full, decay=g["decay"], momentum=full * 9, initial_state=st
    )
    torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-10)


def test_matrix_state_plain_tensor_unless_more_to_carry() -> None:
    B, T, H, D = 1, 5, 2, 4
    q, k, v = rand(B, T, H, D, seed=2), rand(B, T, H, D), rand(B, T, H, D)
    plain = make_memory("matrix", "l2", "none", "gd", batch=2)
    s0 = 0.1 * rand(B, H, D, D)
    o, st = core_for_memory(plain)(q, k, v, lr=0.2, initial_state=s0, output_final_state=True)
    # T = 5 with b = 2 leaves a mini-batch open: its chunk-start W rides along
    assert isinstance(st, MemoryState) and len(st.extra) == 2
    o, st = core_for_memory(plain)(q[:, :4], k[:, :4], v[:, :4], lr=0.2, output_final_state=True)
    assert isinstance(st, torch.Tensor) and st.shape == (B, H, D, D)
    mom = make_memory("matrix", "l2", "none", "momentum", batch=2)
    _, st = core_for_memory(mom)(q, k, v, lr=0.2, momentum=0.5, output_final_state=True)
    assert isinstance(st, MemoryState) and st.momentum is not None


def test_gate_activations() -> None:
    x = rand(2, 3, 4, seed=3)
    data = Gate(mode="data", act="sigmoid")
    torch.testing.assert_close(activate(data, x), torch.sigmoid(x))
    torch.testing.assert_close(activate(data, x, decay=True), F.logsigmoid(x))
    soft = Gate(mode="data", act="softplus")
    torch.testing.assert_close(activate(soft, x), torch.log1p(torch.exp(x)))
    mamba = Gate(mode="data", act="mamba")
    a_log, dt_bias = rand(4), rand(4)
    expect = -torch.exp(a_log) * torch.log1p(torch.exp(x + dt_bias))
    torch.testing.assert_close(activate(mamba, x, decay=True, A_log=a_log, dt_bias=dt_bias), expect)
    learned = learned_gate(Gate(mode="learned", act="logsigmoid"), rand(4, 5), (2, 3, 4))
    assert learned.shape == (2, 3, 4, 5) and bool((learned <= 0).all())
    assert const_values(Gate(mode="const", value=0.5), 3) == [0.5, 0.5, 0.5]
    assert math.isclose(
        const_gate(Gate(mode="const", value=0.5), (1, 1, 1), decay=True).item(),
        math.log(0.5),
        rel_tol=1e-6,
    )


def test_shape_and_gate_errors() -> None:
    B, T, H, D = 1, 4, 2, 4
    q, k, v = rand(B, T, H, D, seed=4), rand(B, T, H, D), rand(B, T, H, 3)
    mem = make_memory("matrix", "l2", "decay", "gd")
    run = core_for_memory(mem)
    dec = gates(B, T, H)["decay"]
    with pytest.raises(ValueError, match="same shape"):
        run(q, k[..., :3], v, lr=0.1, decay=dec)
    with pytest.raises(ValueError, match="decay has shape"):
        run(q, k, v, lr=0.1, decay=dec[:, :, :1])
    with pytest.raises(ValueError, match="lr has shape"):
        run(q, k, v, lr=torch.ones(B, T, H, 3, dtype=DT), decay=dec)
    with pytest.raises(ValueError, match="data gate"):
        run(q, k, v, lr=0.1)
    with pytest.raises(ValueError, match="backend"):
        core_for_memory(mem, "cuda")
