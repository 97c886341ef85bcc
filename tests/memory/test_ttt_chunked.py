"""chunked_minibatch_ttt against the reference: biases, gradients, per-channel gates, splits."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_reference_helpers import DT, make_memory, rand
from test_ttt_helpers import (
    BIASES,
    MLP,
    B,
    D,
    H,
    T,
    arguments,
    build,
    check_split_matches_reference,
    compare,
    initial,
    unit_keys,
)

from archdsl.memory.chunked_ttt import segsum_exp


@pytest.mark.parametrize("bias", list(BIASES))
@pytest.mark.parametrize("structure,b", [("matrix", 1), ("matrix", 4), ("mlp", 3)])
def test_biases(bias: str, structure: str, b: int) -> None:
    compare(build(structure, "decay_after", "momentum", b, bias))


@pytest.mark.parametrize(
    "structure,retention,learner,b,bias",
    [
        ("mlp", "decay_after", "momentum", 4, "l2"),  # Titans
        ("mlp", "none", "gd", 3, "l2"),  # TTT-MLP
        ("mlp", "lq", "gd", 4, "lp3"),  # Moneta
        ("mlp", "decay_before", "gd", 3, "yaad"),  # Yaad
        ("mlp", "kl", "gd", 4, "l2"),  # Memora
        ("mlp", "decay_before", "momentum", 1, "l2"),
        ("matrix", "none", "gd", 4, "l2"),  # TTT-linear
        ("matrix", "decay_after", "momentum", 3, "robust"),
        ("matrix", "kl", "momentum", 1, "huber_coord"),
        ("mlp", "elastic", "gd", 3, "l2"),
    ],
)
def test_gradients(structure: str, retention: str, learner: str, b: int, bias: str) -> None:
    compare(build(structure, retention, learner, b, bias), with_grads=True)


@pytest.mark.parametrize("retention", ["decay_before", "decay_after", "lq", "kl"])
@pytest.mark.parametrize("learner,b", [("gd", 3), ("momentum", 1), ("momentum", 4)])
def test_per_channel_gates_matrix(retention: str, learner: str, b: int) -> None:
    compare(build("matrix", retention, learner, b), per_channel=True, with_grads=b == 4)


def test_steps_learner_mlp() -> None:
    mem = make_memory("mlp", "l2", "none", "steps", 1, l_n=2, **MLP)  # type: ignore[arg-type]
    compare(mem, with_grads=True)


@pytest.mark.parametrize("cut", [1, 4, 6])
@pytest.mark.parametrize("retention", ["decay_after", "lq", "kl"])
def test_split_and_continue(cut: int, retention: str) -> None:
    mem = build("mlp", retention, "momentum", 4)
    torch.manual_seed(1)
    q, k, v = rand(B, T, H, D), unit_keys(rand(B, T, H, D)), rand(B, T, H, D)
    check_split_matches_reference(mem, q, k, v, arguments(mem), initial(mem), cut)


def test_segsum_exp_is_product_of_factors() -> None:
    x = 0.5 + 0.5 * torch.rand(2, 5, 3, dtype=DT)
    d = segsum_exp(torch.log(x))
    for t, j in itertools.product(range(5), range(5)):
        expect = torch.prod(x[:, j + 1 : t + 1], dim=1) if j <= t else torch.zeros(2, 3, dtype=DT)
        torch.testing.assert_close(d[:, t, j], expect)
