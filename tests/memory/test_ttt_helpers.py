"""Shared builders for the chunked-vs-reference tests (no tests here)."""

from __future__ import annotations

from typing import Any

import torch
from test_reference_helpers import DT, gates, make_memory, rand
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.chunked_ttt import chunked_minibatch_ttt
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

B, T, H, D = 1, 11, 2, 4
HIDDEN = 8  # mlp memories below use expand = 2
TOL = {"atol": 1e-10, "rtol": 1e-10}
RETENTIONS = {
    "none": {"retention": "none"},
    "decay_before": {"retention": "decay", "r_when": "before"},
    "decay_after": {"retention": "decay", "r_when": "after"},
    "lq": {"retention": "lq", "r_q": 4.0},
    "kl": {"retention": "kl"},
    "elastic": {"retention": "elastic", "r_l1": 0.02, "r_l2": 0.1},
}
BIASES = {
    "dot": {"bias": "dot"},
    "l2": {"bias": "l2"},
    "lp3": {"bias": "lp", "b_p": 3.0},
    "l1": {"bias": "l1"},
    "huber_coord": {"bias": "huber", "b_form": "coord"},
    "huber_norm": {"bias": "huber", "b_form": "norm"},
    "yaad": {"bias": "huber", "b_form": "mixture"},
    "robust": {"bias": "robust", "b_radius": 0.5},
}
MLP = {"s_expand": 2.0, "s_residual": True, "s_norm": "layer", "s_act": "gelu"}


def build(structure: str, retention: str, learner: str, b: int, bias: str = "l2") -> Memory:
    kw: dict[str, object] = {**RETENTIONS[retention], **BIASES[bias]}
    if structure == "mlp":
        kw.update(MLP)
    return make_memory(structure=structure, learner=learner, batch=b, **kw)  # type: ignore[arg-type]


def initial(mem: Memory) -> MemoryState:
    """Positive initial weights (Memora's log needs them), momentum when the learner has it."""
    if mem.structure.kind == "vector":
        shapes = [(B, H, D)]
    elif mem.structure.kind == "matrix":
        shapes = [(B, H, D, D)]
    else:
        shapes = [(B, H, D, HIDDEN), (B, H, HIDDEN, D)]
    w = tuple(0.1 + 0.4 * torch.rand(*s, dtype=DT) for s in shapes)
    mom = tuple(0.1 * rand(*s) for s in shapes) if mem.learner.kind == "momentum" else None
    return MemoryState(w, mom)


def arguments(mem: Memory, per_channel: bool = False, t: int = T) -> dict[str, object]:
    g = gates(B, t, H, D if per_channel else 1)
    hd = gates(B, t, H)
    kw: dict[str, object] = {"lr": 0.4 * g["lr"]}  # lr < 0.2: no chaotic growth of rounding
    if mem.bias.kind == "huber":
        kw["delta"] = hd["delta"]
    if mem.retention.kind in ("decay", "lq", "kl"):
        kw["decay"] = g["decay"]
    if mem.learner.kind == "momentum":
        kw["momentum"] = hd["momentum"]
    return kw


def unit_keys(k: Tensor) -> Tensor:
    """l2-normalised keys, as the models use them (keeps lr ||k||^2 < 1: no divergence)."""
    return k / k.norm(dim=-1, keepdim=True)


def compare(mem: Memory, per_channel: bool = False, with_grads: bool = False) -> None:
    torch.manual_seed(0)
    q, k, v = rand(B, T, H, D), unit_keys(rand(B, T, H, D)), rand(B, T, H, D)
    kw = arguments(mem, per_channel)
    st = initial(mem)
    leaves: list[Tensor] = [q, k, v] + [x for x in kw.values() if isinstance(x, Tensor)]
    leaves += list(st.weights) + list(st.momentum or ())
    for x in leaves:
        x.requires_grad_(with_grads)
    outs = []
    for fn in (memory_reference, chunked_minibatch_ttt):
        o, fin = fn(mem, q, k, v, **kw, initial_state=st, output_final_state=True)  # type: ignore[operator]
        assert fin is not None
        outs.append((o, list(fin.weights) + list(fin.momentum or ()) + list(fin.extra)))
    (o_ref, s_ref), (o_fast, s_fast) = outs
    torch.testing.assert_close(o_fast, o_ref, **TOL)
    assert len(s_ref) == len(s_fast)
    for a, b in zip(s_fast, s_ref):
        torch.testing.assert_close(a, b, **TOL)
    if not with_grads:
        return
    weights = [torch.randn_like(o_ref)] + [torch.randn_like(s) for s in s_ref[: len(st.weights)]]

    def scalar(o: Tensor, s: list[Tensor]) -> Tensor:
        return sum((w * x).sum() for w, x in zip(weights, [o] + s[: len(st.weights)]))  # type: ignore[return-value]

    g_ref = torch.autograd.grad(scalar(o_ref, s_ref), leaves)
    g_fast = torch.autograd.grad(scalar(o_fast, s_fast), leaves)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, **TOL)


def check_split_matches_reference(
    mem: Memory, q: Tensor, k: Tensor, v: Tensor, kw: dict[str, Any], st: MemoryState, cut: int
) -> None:
    """Two chunked calls (``:cut``, then ``cut:`` from the carried state) equal one pass of
    the reference: outputs and every final-state tensor (weights, momentum, extra)."""
    length = q.shape[1]
    o_all, s_all = memory_reference(mem, q, k, v, **kw, initial_state=st, output_final_state=True)

    def part(sl: slice) -> dict[str, Any]:
        return {n: x[:, sl] if isinstance(x, Tensor) else x for n, x in kw.items()}

    a, b = slice(0, cut), slice(cut, length)
    o1, s1 = chunked_minibatch_ttt(
        mem, q[:, a], k[:, a], v[:, a], **part(a), initial_state=st, output_final_state=True
    )
    o2, s2 = chunked_minibatch_ttt(
        mem, q[:, b], k[:, b], v[:, b], **part(b), initial_state=s1, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, **TOL)
    assert s_all is not None and s2 is not None
    for x, y in zip(
        s2.weights + (s2.momentum or ()) + s2.extra,
        s_all.weights + (s_all.momentum or ()) + s_all.extra,
    ):
        torch.testing.assert_close(x, y, **TOL)
