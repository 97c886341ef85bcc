"""The fused 2-layer mlp scan (`chunked_ttt_mlp`): hand-written backward and the
chunked path against the token-by-token reference (values, final state, gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_reference_helpers import DT, gates, make_memory, rand
from test_ttt_helpers import check_split_matches_reference
from torch import Tensor

import archdsl
from archdsl.ir.memory import Memory
from archdsl.memory.carry import initial_carry
from archdsl.memory.chunked_ttt import chunked_minibatch_ttt
from archdsl.memory.chunked_ttt_coef import coefficients
from archdsl.memory.chunked_ttt_mlp import MlpChunkScan, fused_mlp_applies
from archdsl.memory.chunked_ttt_mlp_step import MlpForm
from archdsl.memory.projections import ShiftedDepthwiseConv
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

B, H, D, HIDDEN = 2, 2, 3, 5
TOL = {"atol": 1e-10, "rtol": 1e-10}


def mlp_memory(
    retention: str, learner: str, residual: bool, act: str = "silu", norm: str = "none"
) -> Memory:
    kw: dict[str, object] = {
        "s_expand": HIDDEN / D,
        "s_residual": residual,
        "s_act": act,
        "s_norm": norm,
    }
    if retention != "none":
        kw["r_when"] = retention
    kind = "none" if retention == "none" else "decay"
    return make_memory("mlp", "l2", kind, learner, 4, **kw)  # type: ignore[arg-type]


def call_arguments(mem: Memory, t: int) -> dict[str, Tensor]:
    g = gates(B, t, H)
    kw = {"lr": 0.4 * g["lr"]}
    if mem.retention.kind == "decay":
        kw["decay"] = g["decay"]
    if mem.learner.kind == "momentum":
        kw["momentum"] = g["momentum"]
    return kw


def start_state(mem: Memory) -> MemoryState:
    shapes = [(B, H, D, HIDDEN), (B, H, HIDDEN, D)]
    w = tuple(0.5 * rand(*s) for s in shapes)
    mom = tuple(0.1 * rand(*s) for s in shapes) if mem.learner.kind == "momentum" else None
    return MemoryState(w, mom)


def run_both(mem: Memory, t: int) -> None:
    """Reference and chunked: outputs, every final-state tensor, and all input gradients."""
    torch.manual_seed(t)
    q, v = rand(B, t, H, D), rand(B, t, H, D)
    k = F.normalize(rand(B, t, H, D), dim=-1)
    kw = call_arguments(mem, t)
    st = start_state(mem)
    leaves = [q, k, v, *kw.values(), *st.weights, *(st.momentum or ())]
    for x in leaves:
        x.requires_grad_(True)
    results = []
    for fn in (memory_reference, chunked_minibatch_ttt):
        o, fin = fn(mem, q, k, v, **kw, initial_state=st, output_final_state=True)  # type: ignore[operator]
        assert fin is not None
        outs = [o, *fin.weights, *(fin.momentum or ())]
        outs += [x for x in fin.extra if x.is_floating_point()]
        torch.manual_seed(99)
        loss = sum((torch.randn(x.shape, dtype=x.dtype) * x).sum() for x in outs)
        results.append((outs, fin.extra, torch.autograd.grad(loss, leaves)))  # type: ignore[arg-type]
    (o_ref, x_ref, g_ref), (o_fast, x_fast, g_fast) = results
    assert len(o_ref) == len(o_fast)
    for a, b in zip(o_fast, o_ref):
        torch.testing.assert_close(a, b, **TOL)
    assert [int(x) for x in x_fast if not x.is_floating_point()] == [
        int(x) for x in x_ref if not x.is_floating_point()
    ]
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():  # the scan without tapes (inference) gives the same numbers
        o, fin = chunked_minibatch_ttt(
            mem, q, k, v, **kw, initial_state=st, output_final_state=True
        )  # type: ignore[arg-type]
    assert fin is not None
    for a, b in zip([o, *fin.weights, *(fin.momentum or ())], o_ref):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(
    "retention,learner,residual",
    [
        ("after", "momentum", True),  # Titans' LMM
        ("after", "momentum", False),
        ("before", "gd", True),
        ("none", "gd", False),  # TTT-MLP
        ("none", "momentum", True),
    ],
)
@pytest.mark.parametrize("t", [8, 11, 3])  # whole chunks, a partial last one, only a partial one
def test_fused_path_matches_reference(retention: str, learner: str, residual: bool, t: int) -> None:
    mem = mlp_memory(retention, learner, residual)
    carry = initial_carry(mem, start_state(mem), rand(B, t, H, D), rand(B, t, H, D))
    assert fused_mlp_applies(mem, carry)
    run_both(mem, t)


@pytest.mark.parametrize(
    "act,norm,retention,learner",
    [
        ("gelu", "layer", "none", "gd"),  # TTT-MLP
        ("gelu", "layer", "after", "momentum"),
        ("tanh", "rms", "before", "momentum"),
        ("relu", "none", "after", "gd"),
        ("identity", "layer", "none", "momentum"),
    ],
)
def test_fused_path_other_structures(act: str, norm: str, retention: str, learner: str) -> None:
    run_both(mlp_memory(retention, learner, True, act, norm), 11)


def test_split_mid_chunk_continues_exactly() -> None:
    """A call ending inside a mini-batch (fused) hands over to one that starts there (general)."""
    mem = mlp_memory("after", "momentum", True)
    t, cut = 13, 6
    torch.manual_seed(3)
    q, v = rand(B, t, H, D), rand(B, t, H, D)
    k = F.normalize(rand(B, t, H, D), dim=-1)
    check_split_matches_reference(mem, q, k, v, call_arguments(mem, t), start_state(mem), cut)


def scan_inputs(momentum: bool, n_chunks: int = 2, g: int = 2, n: int = 3) -> list[Tensor | None]:
    """Random chunk-major inputs of `MlpChunkScan` (tiny, float64, all requiring grad)."""
    torch.manual_seed(7)
    d, h = 3, 4
    lr = 0.3 * torch.rand(n_chunks, g, n, 1, dtype=DT)
    log_alpha = torch.log(0.7 + 0.3 * torch.rand(n_chunks, g, n, 1, dtype=DT))
    log_beta = torch.log(0.5 + 0.4 * torch.rand(n_chunks, g, n, 1, dtype=DT))
    cf = coefficients(lr, log_alpha, log_beta if momentum else None)
    q, k, v = (rand(n_chunks, g, n, d) for _ in range(3))
    w1, w2 = 0.5 * rand(g, d, h), 0.5 * rand(g, h, d)
    s1, s2 = (0.2 * rand(g, d, h), 0.2 * rand(g, h, d)) if momentum else (None, None)
    pm = cf.pm_end.unsqueeze(-1) if cf.pm_end is not None else None
    args = [q, k, v, cf.a, cf.C[..., 0], cf.e, cf.m_end, pm, w1, w2, s1, s2]
    return [None if x is None else x.detach().requires_grad_() for x in args]


@pytest.mark.parametrize(
    "momentum,residual,act,norm",
    [
        (True, True, "silu", "none"),
        (True, False, "silu", "none"),
        (False, True, "silu", "none"),
        (False, False, "silu", "none"),
        (True, True, "gelu", "layer"),
        (False, False, "tanh", "rms"),
    ],
)
def test_scan_gradcheck(momentum: bool, residual: bool, act: str, norm: str) -> None:
    args = scan_inputs(momentum)
    form = MlpForm(residual, act, norm)

    def scan(*xs: Tensor | None) -> tuple[Tensor, ...]:
        outs = MlpChunkScan.apply(form, *xs)
        return tuple(o for o in outs if o is not None)

    assert torch.autograd.gradcheck(scan, tuple(args))


def test_titans_spec_takes_the_fused_path() -> None:
    spec = archdsl.load("specs/titans_memory.arch", d_model=12, heads=2)
    mem = spec.ir.mixer("memory")
    assert isinstance(mem, Memory)
    shapes = [(1, 2, 6, 24), (1, 2, 24, 6)]
    st = MemoryState(tuple(torch.zeros(s) for s in shapes), tuple(torch.zeros(s) for s in shapes))
    assert fused_mlp_applies(
        mem, initial_carry(mem, st, torch.zeros(1, 5, 2, 6), torch.zeros(1, 5, 2, 6))
    )


def test_shifted_depthwise_conv() -> None:
    torch.manual_seed(0)
    full = rand(2, 9, 5).requires_grad_()
    w = rand(5, 4).requires_grad_()
    expect = F.conv1d(full.transpose(1, 2), w.unsqueeze(1), groups=5).transpose(1, 2)
    torch.testing.assert_close(ShiftedDepthwiseConv.apply(full, w), expect, **TOL)
    assert torch.autograd.gradcheck(ShiftedDepthwiseConv.apply, (full, w))
