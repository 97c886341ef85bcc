"""chunked_gated_linear's matrix memory across several segments, on both of its paths.

The matrix memory runs segment by segment (``SEGMENT_TOKEN_HEADS`` tokens x heads each);
without autograd its intermediates go into buffers reused by every segment, with autograd
they are allocated. Here the segment size is forced down so that T = 37 runs as several
segments (the last one partial), and every path is checked against a token loop written
from the recurrence ``W_t = alpha_t W_{t-1} + lr_t k_t v_t^T``, ``o_t = scale q_t W_t``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import archdsl.memory.chunked_linear as chunked_linear_module
from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_linear import chunked_gated_linear, segment_chunks

F64 = torch.float64
B, T, H, DK, DV = 2, 37, 2, 4, 3
CHUNK = 4


def memory(decayed: bool) -> Memory:
    retention = (
        Retention(kind="decay", alpha=Gate(mode="data")) if decayed else Retention(kind="none")
    )
    return Memory(
        name="mem",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=retention,
        learner=Learner(kind="gd", lr=Gate(mode="data")),
    )


def token_loop(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor | float, decay: Tensor | None, w: Tensor
) -> tuple[Tensor, Tensor]:
    """The recurrence one token at a time (scale dk^-1/2)."""
    outs = []
    for t in range(q.shape[1]):
        rate = lr if isinstance(lr, float) else (lr[:, t] if lr.dim() == 4 else lr[:, t, :, None])
        if decay is not None:
            gate = decay[:, t] if decay.dim() == 4 else decay[:, t, :, None].expand(-1, -1, DK)
            w = torch.exp(gate)[..., None] * w
        w = w + (rate * k[:, t])[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * DK**-0.5, w))
    return torch.stack(outs, dim=1), w


def inputs(decay_per: str | None, lr_kind: str, seed: int) -> dict[str, Tensor | float | None]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    lr: Tensor | float = {"one": 1.0, "float": 0.7}.get(lr_kind, 0.0)
    if lr_kind in ("head", "channel"):
        shape = (B, T, H, DK) if lr_kind == "channel" else (B, T, H)
        lr = torch.rand(*shape, generator=gen, dtype=F64)
    decay = None
    if decay_per is not None:
        shape = (B, T, H, DK) if decay_per == "channel" else (B, T, H)
        decay = torch.nn.functional.logsigmoid(rnd(*shape) + 1.0)
    return {
        "q": rnd(B, T, H, DK),
        "k": rnd(B, T, H, DK),
        "v": rnd(B, T, H, DV),
        "lr": lr,
        "decay": decay,
        "w0": rnd(B, H, DK, DV),
    }


@pytest.fixture
def two_chunk_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_linear_module, "SEGMENT_TOKEN_HEADS", 2 * B * H * CHUNK)
    assert segment_chunks(B * H, CHUNK) == 2  # T = 37: five segments, the last partial


def run(x: dict[str, Tensor | float | None]) -> tuple[Tensor, Tensor]:
    o, state = chunked_gated_linear(
        memory(x["decay"] is not None),
        x["q"],  # type: ignore[arg-type]
        x["k"],  # type: ignore[arg-type]
        x["v"],  # type: ignore[arg-type]
        lr=x["lr"],  # type: ignore[arg-type]
        decay=x["decay"],  # type: ignore[arg-type]
        initial_state=x["w0"],  # type: ignore[arg-type]
        output_final_state=True,
        chunk=CHUNK,
    )
    assert state is not None
    return o, state.weights[0]


CASES = [
    (decay_per, lr_kind)
    for decay_per in (None, "head", "channel")
    for lr_kind in ("head", "channel", "one", "float")
]


@pytest.mark.usefixtures("two_chunk_segments")
@pytest.mark.parametrize(("decay_per", "lr_kind"), CASES)
def test_segments_match_token_loop_with_and_without_autograd(
    decay_per: str | None, lr_kind: str
) -> None:
    x = inputs(decay_per, lr_kind, seed=1)
    w0 = x["w0"]
    assert isinstance(w0, Tensor)
    w0_before = w0.clone()
    with torch.no_grad():  # reused buffers
        o_buf, w_buf = run(x)
    leaves = {n: t.clone().requires_grad_() if isinstance(t, Tensor) else t for n, t in x.items()}
    o_grad, w_grad = run(leaves)  # allocated intermediates, recorded by autograd
    o_ref, w_ref = token_loop(x["q"], x["k"], x["v"], x["lr"], x["decay"], x["w0"])  # type: ignore[arg-type]
    for o, w in ((o_buf, w_buf), (o_grad.detach(), w_grad.detach())):
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(w0, w0_before)  # the initial state is read, never written
    assert o_buf.is_contiguous() and o_buf.shape == (B, T, H, DV)


@pytest.mark.usefixtures("two_chunk_segments")
@pytest.mark.parametrize("decay_per", [None, "head", "channel"])
def test_gradients_across_segments_match_token_loop(decay_per: str | None) -> None:
    x = inputs(decay_per, "head", seed=2)
    gen = torch.Generator().manual_seed(3)
    o_probe = torch.randn(B, T, H, DV, generator=gen, dtype=F64)
    w_probe = torch.randn(B, H, DK, DV, generator=gen, dtype=F64)
    names = [n for n, t in x.items() if isinstance(t, Tensor)]

    def grads(fn: object) -> tuple[Tensor, ...]:
        leaves = {
            n: t.clone().requires_grad_() if isinstance(t, Tensor) else t for n, t in x.items()
        }
        if fn is run:
            o, w = run(leaves)
        else:
            o, w = token_loop(*(leaves[n] for n in ("q", "k", "v", "lr", "decay", "w0")))  # type: ignore[arg-type]
        loss = (o * o_probe).sum() + (w * w_probe).sum()
        return torch.autograd.grad(loss, [t for n in names if isinstance(t := leaves[n], Tensor)])

    for name, g_got, g_want in zip(names, grads(run), grads(token_loop)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize("decay_per", [None, "head", "channel"])
def test_segment_size_changes_nothing(monkeypatch: pytest.MonkeyPatch, decay_per: str) -> None:
    x = inputs(decay_per, "head", seed=4)
    results = []
    for token_heads in (1, 3 * B * H * CHUNK, 10**6):  # one chunk, three chunks, everything
        monkeypatch.setattr(chunked_linear_module, "SEGMENT_TOKEN_HEADS", token_heads)
        with torch.no_grad():
            results.append(run(x))
    for o, w in results[1:]:
        torch.testing.assert_close(o, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w, results[0][1], rtol=1e-12, atol=1e-12)


def test_weak_decay_after_a_strong_one_keeps_float32_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One segment of 16 chunks: 32 tokens decaying by exp(-30) each, then 32 tokens
    decaying by exp(-0.001). The chunk-to-chunk weights of the weak part are exponentials
    of differences of prefix sums near -960; formed in float32 they would lose ~1e-5 of
    relative precision, so float32 must match float64 to a few ulps here."""
    monkeypatch.setattr(chunked_linear_module, "SEGMENT_TOKEN_HEADS", 16 * CHUNK)
    t_len = 64
    gen = torch.Generator().manual_seed(5)
    decay = torch.cat([torch.full((1, 32, 1), -30.0), torch.full((1, 32, 1), -1e-3)], dim=1)
    x = {
        "q": torch.randn(1, t_len, 1, DK, generator=gen, dtype=F64),
        "k": torch.randn(1, t_len, 1, DK, generator=gen, dtype=F64),
        "v": torch.randn(1, t_len, 1, DV, generator=gen, dtype=F64),
        "lr": torch.rand(1, t_len, 1, generator=gen, dtype=F64),
        "decay": decay.to(F64),
    }
    outs = []
    for dtype in (torch.float32, F64):
        y = {n: t.to(dtype) for n, t in x.items()}
        with torch.no_grad():
            o, _ = chunked_gated_linear(
                memory(True), y["q"], y["k"], y["v"], lr=y["lr"], decay=y["decay"], chunk=CHUNK
            )
        outs.append(o.double())
    err = (outs[0] - outs[1]).abs().max() / outs[1].abs().max()
    assert err < 2e-6, f"float32 relative error {err:.2e}"
