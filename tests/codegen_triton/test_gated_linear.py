"""Generated gated-linear kernel vs a naive token-by-token recurrence written here.

Reference (float64): W_t = alpha_t W_{t-1} + lr_t k_t v_t^T, o_t = scale q_t W_t, with
alpha per head ([B, T, H]) or per key channel ([B, T, H, dk]) given in log space.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from archdsl.codegen.triton.ops import gated_linear_spec, launcher_for, triton_gated_linear

RTOL = 1e-4
ATOL = 1e-4


def naive_gated_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    lr: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    q, k, v = q.double(), k.double(), v.double()
    W = torch.zeros(B, H, dk, dv, dtype=torch.float64)
    if initial_state is not None:
        W = W + initial_state.double()
    outs = []
    for t in range(T):
        if log_decay is not None:
            alpha = log_decay[:, t].double().exp()  # [B, H] or [B, H, dk]
            W = W * (alpha[..., None, None] if alpha.dim() == 2 else alpha[..., None])
        rate = lr[:, t].double()[..., None, None] if lr is not None else 1.0
        W = W + rate * k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], W))
    return torch.stack(outs, dim=1), W


def make_inputs(
    B: int, T: int, H: int, dk: int, dv: int, decay: str, has_lr: bool, has_h0: bool, seed: int
) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, dk, generator=gen)
    k = torch.randn(B, T, H, dk, generator=gen) / dk**0.5
    v = torch.randn(B, T, H, dv, generator=gen)
    decay_shape = {"none": None, "head": (B, T, H), "channel": (B, T, H, dk)}[decay]
    # log alpha in [-1, 0): strong enough that a wrong decay shows
    log_decay = -torch.rand(decay_shape, generator=gen) if decay_shape else None
    lr = torch.rand(B, T, H, generator=gen) if has_lr else None
    h0 = torch.randn(B, H, dk, dv, generator=gen) if has_h0 else None
    return {"q": q, "k": k, "v": v, "log_decay": log_decay, "lr": lr, "initial_state": h0}


FLAG_COMBOS = list(itertools.product(["none", "head", "channel"], [False, True], [False, True]))


@pytest.mark.parametrize(("decay", "has_lr", "has_h0"), FLAG_COMBOS)
def test_forward_matches_recurrence(decay: str, has_lr: bool, has_h0: bool) -> None:
    x = make_inputs(2, 37, 2, 16, 16, decay, has_lr, has_h0, seed=1)
    scale = 0.3
    o, ht = triton_gated_linear(
        x["q"],
        x["k"],
        x["v"],
        x["log_decay"],
        x["lr"],
        scale,
        x["initial_state"],
        output_final_state=True,
        chunk_size=16,
    )
    o_ref, ht_ref = naive_gated_linear(
        x["q"], x["k"], x["v"], x["log_decay"], x["lr"], scale, x["initial_state"]
    )
    assert o.dtype == torch.float32 and ht is not None and ht.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ht.double(), ht_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("T", "dk", "dv", "chunk", "decay"),
    [
        (100, 32, 16, 32, "head"),  # T % chunk != 0, dk != dv
        (45, 20, 24, 16, "head"),  # non-power-of-two head dims: padded blocks
        (45, 20, 24, 16, "channel"),
        (70, 16, 96, 64, "head"),  # dv split over two programs (BLOCK_V = 64)
        (5, 16, 16, 16, "channel"),  # shorter than one chunk
    ],
)
def test_shapes_and_padding(T: int, dk: int, dv: int, chunk: int, decay: str) -> None:
    x = make_inputs(1, T, 2, dk, dv, decay, True, True, seed=2)
    o, ht = triton_gated_linear(
        x["q"], x["k"], x["v"], x["log_decay"], x["lr"], None, x["initial_state"], True, chunk
    )
    o_ref, ht_ref = naive_gated_linear(
        x["q"], x["k"], x["v"], x["log_decay"], x["lr"], dk**-0.5, x["initial_state"]
    )
    torch.testing.assert_close(o.double(), o_ref, rtol=RTOL, atol=ATOL)
    assert ht is not None
    torch.testing.assert_close(ht.double(), ht_ref, rtol=RTOL, atol=ATOL)


def test_chunk_size_does_not_change_results() -> None:
    x = make_inputs(1, 80, 2, 16, 16, "head", True, False, seed=3)
    args = (x["q"], x["k"], x["v"], x["log_decay"], x["lr"], None, None, True)
    o16, h16 = triton_gated_linear(*args, chunk_size=16)
    o64, h64 = triton_gated_linear(*args, chunk_size=64)
    torch.testing.assert_close(o16, o64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h16, h64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decay", ["head", "channel"])
def test_strong_decay_stays_finite(decay: str) -> None:
    x = make_inputs(1, 40, 2, 16, 16, decay, False, False, seed=4)
    assert x["log_decay"] is not None
    log_decay = x["log_decay"] * 60.0  # alpha down to e^-60: naive e^{+b} factoring overflows
    o, ht = triton_gated_linear(x["q"], x["k"], x["v"], log_decay, None, None, None, True, 32)
    o_ref, ht_ref = naive_gated_linear(x["q"], x["k"], x["v"], log_decay, None, 0.25, None)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), o_ref, rtol=RTOL, atol=ATOL)
    assert ht is not None
    torch.testing.assert_close(ht.double(), ht_ref, rtol=RTOL, atol=ATOL)


def test_no_final_state_when_not_asked() -> None:
    x = make_inputs(1, 20, 2, 16, 16, "head", True, False, seed=5)
    o, ht = triton_gated_linear(x["q"], x["k"], x["v"], x["log_decay"], x["lr"])
    assert ht is None
    o_ref, _ = naive_gated_linear(x["q"], x["k"], x["v"], x["log_decay"], x["lr"], 0.25, None)
    torch.testing.assert_close(o.double(), o_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("decay", "has_lr", "has_h0"),
    [("head", True, True), ("channel", True, False), ("none", False, True)],
)
def test_gradients_match_recurrence(decay: str, has_lr: bool, has_h0: bool) -> None:
    x = make_inputs(1, 29, 2, 16, 16, decay, has_lr, has_h0, seed=6)
    leaves = {n: t.clone().requires_grad_(True) for n, t in x.items() if t is not None}
    refs = {n: t.detach().double().requires_grad_(True) for n, t in leaves.items()}
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(1, 29, 2, 16, generator=gen)
    dht = torch.randn(1, 2, 16, 16, generator=gen)

    def run(fn, inputs):  # type: ignore[no-untyped-def]
        return fn(
            inputs["q"],
            inputs["k"],
            inputs["v"],
            inputs.get("log_decay"),
            inputs.get("lr"),
            0.5,
            inputs.get("initial_state"),
        )

    o, ht = run(lambda *a: triton_gated_linear(*a, output_final_state=True, chunk_size=16), leaves)
    ((o * do).sum() + (ht * dht).sum()).backward()
    o_ref, ht_ref = run(naive_gated_linear, refs)
    ((o_ref * do.double()).sum() + (ht_ref * dht.double()).sum()).backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None, name
        torch.testing.assert_close(leaf.grad.double(), refs[name].grad, rtol=RTOL, atol=ATOL)


def test_launcher_rejects_inputs_that_contradict_the_flags() -> None:
    spec = gated_linear_spec(
        has_decay=False,
        decay_per_channel=False,
        has_lr=True,
        use_initial_state=False,
        store_final_state=False,
    )
    launch = launcher_for(spec)
    x = make_inputs(1, 8, 2, 16, 16, "head", True, False, seed=8)
    with pytest.raises(ValueError, match="log_decay must be None"):
        launch(x["q"], x["k"], x["v"], x["log_decay"], x["lr"])
    with pytest.raises(ValueError, match="lr must be"):
        launch(x["q"], x["k"], x["v"], None, None)
    with pytest.raises(ValueError, match="lr must be"):
        launch(x["q"], x["k"], x["v"], None, x["lr"][:, :4])
