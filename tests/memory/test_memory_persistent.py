"""Persistent memory tokens (Titans MAG / MAL: the memory computes ``M([p | x])``), and the
recall stream's conv cache (Titans MAC).

A layer with ``features.persistent = n`` equals the same layer without them run on the
sequence with the learned tokens prepended, the first ``n`` outputs dropped; its ``step``
and split calls continue from the same state."""

from __future__ import annotations

import torch

from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.layer import LayerState, MemoryLayer

D_MODEL, HEADS, N, T, B = 16, 2, 3, 13, 2


def titans_like(persistent: int) -> Memory:
    return Memory(
        name="memory",
        structure=Structure(kind="mlp", depth=2, expand=2.0, act="silu", residual=True),
        bias=Bias(kind="l2"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="logsigmoid"), when="after"),
        learner=Learner(
            kind="momentum",
            lr=Gate(mode="data", act="sigmoid"),
            beta=Gate(mode="data", act="sigmoid"),
        ),
        batch=4,
        features=Features(conv=4, act="silu", norm="l2", persistent=persistent),
    )


def _pair() -> tuple[MemoryLayer, MemoryLayer]:
    torch.manual_seed(0)
    with_tokens = MemoryLayer(titans_like(N), d_model=D_MODEL, heads=HEADS).double()
    plain = MemoryLayer(titans_like(0), d_model=D_MODEL, heads=HEADS).double()
    missing = plain.load_state_dict(with_tokens.state_dict(), strict=False)
    assert missing.unexpected_keys == ["persistent"] and not missing.missing_keys
    return with_tokens, plain


def test_persistent_tokens_are_a_prepended_prefix() -> None:
    with_tokens, plain = _pair()
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    assert with_tokens.persistent is not None
    prefix = with_tokens.persistent.unsqueeze(0).expand(B, -1, -1)
    want = plain(torch.cat([prefix, x], dim=1))
    got = with_tokens(x)
    assert isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)
    torch.testing.assert_close(got, want[:, N:], atol=1e-10, rtol=1e-10)
    # the tokens are trained through the prefix they stand for
    (d_tokens,) = torch.autograd.grad(got.square().sum(), with_tokens.persistent)
    assert d_tokens.abs().max() > 0


def test_step_and_split_continue_after_the_tokens() -> None:
    with_tokens, _ = _pair()
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        full = with_tokens(x)
        state = with_tokens.initial_state(B)
        steps = []
        for t in range(T):
            y, state = with_tokens.step(x[:, t], state)
            steps.append(y)
        first, mid = with_tokens(x[:, :6], return_state=True)  # type: ignore[misc]
        assert isinstance(mid, LayerState)
        second = with_tokens(x[:, 6:], mid)
    assert isinstance(full, torch.Tensor) and isinstance(second, torch.Tensor)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-10, rtol=1e-10)


def test_recall_conv_continues_across_segments() -> None:
    """`recall` on two segments, carrying its state, reads what one recall over both reads
    (the memory itself unchanged): the q conv sees the previous segment's tokens."""
    _, plain = _pair()
    assert plain.q_conv is not None
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, written = plain(torch.randn(B, 8, D_MODEL, dtype=torch.float64), return_state=True)  # type: ignore[misc]
        whole, _ = plain.recall(x, written)
        first, carried = plain.recall(x[:, :5], written)
        second, _ = plain.recall(x[:, 5:], carried)
        fresh, _ = plain.recall(x[:, 5:], written)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(fresh[:, :3], whole[:, 5:8])  # an empty cache would differ
