"""The definitional reference against closed forms and explicit loops written here."""

from __future__ import annotations

import pytest
import torch
from test_reference_helpers import DT, gates, make_memory, rand
from torch import Tensor

from archdsl.memory.inner import SMOOTH_EPS
from archdsl.memory.reference import memory_reference, token_grad_fn
from archdsl.memory.state import MemoryState

B, T, H, DK, DV = 2, 9, 2, 4, 3


def qkv(dv: int = DV, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    return rand(B, T, H, DK, seed=seed), rand(B, T, H, DK), rand(B, T, H, dv)


def test_dot_gd_is_causal_linear_attention() -> None:
    q, k, v = qkv()
    mem = make_memory(bias="dot")
    o, st = memory_reference(mem, q, k, v, lr=1.0, output_final_state=True)
    scores = torch.einsum("bthd,bshd->bhts", q * DK**-0.5, k).tril()
    expect = torch.einsum("bhts,bshe->bthe", scores, v)
    torch.testing.assert_close(o, expect, atol=1e-12, rtol=0)
    assert st is not None
    torch.testing.assert_close(st.weights[0], torch.einsum("bthd,bthe->bhde", k, v))


def test_gated_delta_rule_explicit_loop() -> None:
    q, k, v = qkv()
    g = gates(B, T, H)
    mem = make_memory(retention="decay")
    o, st = memory_reference(mem, q, k, v, lr=g["lr"], decay=g["decay"], output_final_state=True)
    S = torch.zeros(B, H, DK, DV, dtype=DT)
    outs = []
    for t in range(T):
        S = S * g["decay"][:, t].exp()[..., None, None]
        kt, vt, bt = k[:, t], v[:, t], g["lr"][:, t]
        err = vt - torch.einsum("bhd,bhde->bhe", kt, S)
        S = S + bt[..., None, None] * kt[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, S))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)
    assert st is not None
    torch.testing.assert_close(st.weights[0], S, atol=1e-12, rtol=0)


def test_titans_momentum_decay_after_explicit_loop() -> None:
    q, k, v = qkv()
    g = gates(B, T, H)
    mem = make_memory(retention="decay", learner="momentum", r_when="after")
    o, st = memory_reference(
        mem, q, k, v, lr=g["lr"], decay=g["decay"], momentum=g["momentum"], output_final_state=True
    )
    W = torch.zeros(B, H, DK, DV, dtype=DT)
    S = torch.zeros_like(W)
    outs = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        err = torch.einsum("bhd,bhde->bhe", kt, W) - vt
        grad = kt[..., :, None] * err[..., None, :]
        S = g["momentum"][:, t, :, None, None] * S - g["lr"][:, t, :, None, None] * grad
        W = g["decay"][:, t].exp()[..., None, None] * W + S
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)
    assert st is not None and st.momentum is not None
    torch.testing.assert_close(st.momentum[0], S, atol=1e-12, rtol=0)


def _hand_output_grad(kind: str, form: str, e: Tensor, v: Tensor, d: Tensor) -> Tensor:
    """dl/dy for each bias, written from PAPERS.md (with the documented surrogates)."""
    sign = e / torch.sqrt(e**2 + SMOOTH_EPS)
    norm = e.norm(dim=-1, keepdim=True)
    if kind == "dot":
        return -v
    if kind == "l2":
        return e
    if kind == "lp":  # p = 3: p |e|^(p-1) sign(e), |x| ~ sqrt(x^2 + eps)
        return 3.0 * (e**2 + SMOOTH_EPS) * sign
    if kind == "l1":
        return sign
    if kind == "robust":  # radius 0.7
        return e + 0.7 * e / torch.sqrt(norm**2 + SMOOTH_EPS)
    d = d[..., None]
    if form == "coord":
        return torch.where(e.abs() <= d, e, d * e.sign())
    if form == "norm":
        return torch.where(norm <= d, e, d * e / norm)
    return torch.where(norm <= d, e, d * sign)


@pytest.mark.parametrize(
    "kind,form",
    [("dot", "coord"), ("l2", "coord"), ("lp", "coord"), ("l1", "coord"), ("robust", "coord")]
    + [("huber", f) for f in ("coord", "norm", "mixture")],
)
def test_bias_gradient_matches_hand_formula(kind: str, form: str) -> None:
    mem = make_memory(bias=kind, b_p=3.0, b_form=form, b_radius=0.7)
    W = rand(B, H, DK, DV, seed=1)
    k, v = rand(B, H, DK), rand(B, H, DV)
    d = 0.2 + 2.0 * torch.rand(B, H, dtype=DT)  # both sides of the Huber threshold
    (g,) = token_grad_fn(mem)((W,), k, v, d)
    e = torch.einsum("bhd,bhde->bhe", k, W) - v
    expect = k[..., :, None] * _hand_output_grad(kind, form, e, v, d)[..., None, :]
    torch.testing.assert_close(g, expect, atol=1e-12, rtol=0)


def test_minibatch_gradients_at_chunk_start() -> None:
    q, k, v = qkv()
    g = gates(B, T, H)
    b = 4
    mem = make_memory(retention="decay", batch=b)
    o = memory_reference(mem, q, k, v, lr=g["lr"], decay=g["decay"])[0]
    W = torch.zeros(B, H, DK, DV, dtype=DT)
    outs = []
    for t in range(T):
        if t % b == 0:
            W0 = W
        kt = k[:, t]
        grad = kt[..., :, None] * (torch.einsum("bhd,bhde->bhe", kt, W0) - v[:, t])[..., None, :]
        W = g["decay"][:, t].exp()[..., None, None] * W - g["lr"][:, t, :, None, None] * grad
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_longhorn_implicit_explicit_loop() -> None:
    q, k, v = qkv()
    lr = gates(B, T, H)["lr"]
    o = memory_reference(make_memory(learner="implicit"), q, k, v, lr=lr)[0]
    W = torch.zeros(B, H, DK, DV, dtype=DT)
    outs = []
    for t in range(T):
        kt = k[:, t]
        eps = lr[:, t] / (1 + lr[:, t] * (kt**2).sum(-1))
        err = v[:, t] - torch.einsum("bhd,bhde->bhe", kt, W)
        W = W + eps[..., None, None] * kt[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_steps_n_gd_steps_per_token() -> None:
    q, k, v = qkv()
    lr = gates(B, T, H)["lr"]
    o = memory_reference(make_memory(learner="steps", l_n=3), q, k, v, lr=lr)[0]
    W = torch.zeros(B, H, DK, DV, dtype=DT)
    outs = []
    for t in range(T):
        kt = k[:, t]
        for _ in range(3):
            err = torch.einsum("bhd,bhde->bhe", kt, W) - v[:, t]
            W = W - lr[:, t, :, None, None] * kt[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_moneta_lq_b1_explicit_loop() -> None:
    q, k, v = qkv()
    g = gates(B, T, H)
    mem = make_memory(bias="lp", retention="lq", b_p=3.0, r_q=4.0)
    W0 = rand(B, H, DK, DV, seed=3)
    o = memory_reference(
        mem, q, k, v, lr=g["lr"], decay=g["decay"], initial_state=MemoryState((W0,))
    )[0]
    A, W = W0, W0
    outs = []
    for t in range(T):
        kt = k[:, t]
        e = torch.einsum("bhd,bhde->bhe", kt, W) - v[:, t]
        grad = kt[..., :, None] * (3 * e * torch.sqrt(e**2 + SMOOTH_EPS))[..., None, :]
        A = g["decay"][:, t].exp()[..., None, None] * A - g["lr"][:, t, :, None, None] * grad
        W = A / (A**4).sum((-2, -1), keepdim=True) ** 0.5
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_memora_kl_b1_explicit_loop() -> None:
    q, k, v = qkv()
    g = gates(B, T, H)
    W0 = torch.softmax(rand(B, H, DK, DV, seed=4), dim=-2)
    o = memory_reference(
        make_memory(retention="kl"), q, k, v, lr=g["lr"], decay=g["decay"], initial_state=W0
    )[0]
    W = W0
    outs = []
    for t in range(T):
        kt = k[:, t]
        grad = kt[..., :, None] * (torch.einsum("bhd,bhde->bhe", kt, W) - v[:, t])[..., None, :]
        logits = (
            g["decay"][:, t].exp()[..., None, None] * W.log() - g["lr"][:, t, :, None, None] * grad
        )
        W = torch.softmax(logits, dim=-2)
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_elastic_soft_threshold_explicit_loop() -> None:
    q, k, v = qkv()
    lr = gates(B, T, H)["lr"]
    mem = make_memory(retention="elastic", r_l1=0.05, r_l2=0.3)
    o = memory_reference(mem, q, k, v, lr=lr)[0]
    W = torch.zeros(B, H, DK, DV, dtype=DT)
    outs = []
    for t in range(T):
        eta = lr[:, t, :, None, None]
        kt = k[:, t]
        grad = kt[..., :, None] * (torch.einsum("bhd,bhde->bhe", kt, W) - v[:, t])[..., None, :]
        lam = (1 / 0.3) / (1 / 0.3 + eta)  # beta / (beta + eta), 1/beta = l2
        gamma = eta * (1 / 0.3) / ((1 / 0.05) * (eta + 1 / 0.3))  # eta beta / (alpha (eta + beta))
        x = lam * W - eta * lam * grad
        W = x.sign() * (x.abs() - gamma).clamp_min(0)
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] * DK**-0.5, W))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-12, rtol=0)


def test_split_and_continue_inside_a_minibatch() -> None:
    q, k, v = qkv(dv=DK)
    g = gates(B, T, H)
    mem = make_memory("mlp", "l2", "lq", "momentum", batch=3, s_residual=True, s_norm="layer")
    W0 = MemoryState((0.3 * rand(B, H, DK, 16, seed=5), 0.3 * rand(B, H, 16, DK)))
    kw = {n: g[n] for n in ("lr", "decay", "momentum")}
    full, st_full = memory_reference(mem, q, k, v, **kw, initial_state=W0, output_final_state=True)
    cut = 4
    first = {n: x[:, :cut] for n, x in kw.items()}
    rest = {n: x[:, cut:] for n, x in kw.items()}
    o1, st1 = memory_reference(
        mem, q[:, :cut], k[:, :cut], v[:, :cut], **first, initial_state=W0, output_final_state=True
    )
    o2, st2 = memory_reference(
        mem, q[:, cut:], k[:, cut:], v[:, cut:], **rest, initial_state=st1, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([o1, o2], 1), full, atol=1e-12, rtol=0)
    assert st_full is not None and st2 is not None
    for a, b in zip(st_full.weights + st_full.extra, st2.weights + st2.extra):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"retention": "decay", "r_when": "before"},
        {"structure": "mlp", "learner": "momentum", "batch": 2, "s_depth": 2, "s_expand": 1.0},
    ],
)
def test_gradcheck_end_to_end(kw: dict[str, object]) -> None:
    b, t, h, d = 1, 3, 1, 2
    mem = make_memory(**kw)  # type: ignore[arg-type]
    g = gates(b, t, h)
    mlp = mem.structure.kind == "mlp"
    w0 = [0.5 * rand(b, h, d, d, seed=6) for _ in range(2 if mlp else 1)]
    inputs = [rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h, d), g["lr"], g["decay"]]
    inputs += [g["momentum"]] + w0
    inputs = [x.clone().requires_grad_(True) for x in inputs]

    def run(
        q: Tensor, k: Tensor, v: Tensor, lr: Tensor, dec: Tensor, mom: Tensor, *w: Tensor
    ) -> Tensor:
        st = MemoryState(tuple(w))
        extra = {"momentum": mom} if mem.learner.kind == "momentum" else {}
        decay = dec if mem.retention.kind == "decay" else None
        return memory_reference(mem, q, k, v, lr=lr, decay=decay, initial_state=st, **extra)[0]

    assert torch.autograd.gradcheck(run, tuple(inputs))


def test_clear_errors() -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match="implicit"):
        memory_reference(make_memory("mlp", learner="implicit"), q, k, v, lr=0.1)
    with pytest.raises(ValueError, match="initial_state"):
        memory_reference(make_memory("mlp"), q, k, v, lr=0.1)
    with pytest.raises(ValueError, match="decay"):
        memory_reference(make_memory(retention="decay"), q, k, v, lr=0.1)
    with pytest.raises(ValueError, match="same shape"):
        memory_reference(make_memory(), q, k[..., :2], v, lr=0.1)
