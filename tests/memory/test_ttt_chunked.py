"""chunked_minibatch_ttt against the reference: biases, gradients, per-channel gates, splits."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_reference_helpers import DT, make_memory, rand
from test_ttt_helpers import (
    BIASES,
    MLP,
    TOL,
    B,
    D,
    H,
    T,
    arguments,
    build,
    compare,
    initial,
    unit_keys,
)
from torch import Tensor

from archdsl.memory.chunked_ttt import chunked_minibatch_ttt, segsum_exp
from archdsl.memory.reference import memory_reference


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
    kw = arguments(mem)
    st = initial(mem)
    o_all, s_all = memory_reference(mem, q, k, v, **kw, initial_state=st, output_final_state=True)  # type: ignore[arg-type]

    def part(sl: slice) -> dict[str, object]:
        return {n: x[:, sl] if isinstance(x, Tensor) else x for n, x in kw.items()}

    a, b = slice(0, cut), slice(cut, T)
    o1, s1 = chunked_minibatch_ttt(
        mem, q[:, a], k[:, a], v[:, a], **part(a), initial_state=st, output_final_state=True
    )  # type: ignore[arg-type]
    o2, s2 = chunked_minibatch_ttt(
        mem, q[:, b], k[:, b], v[:, b], **part(b), initial_state=s1, output_final_state=True
    )  # type: ignore[arg-type]
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, **TOL)
    assert s_all is not None and s2 is not None
    for x, y in zip(
        s2.weights + (s2.momentum or ()) + s2.extra,
        s_all.weights + (s_all.momentum or ()) + s_all.extra,
    ):
        torch.testing.assert_close(x, y, **TOL)


def test_segsum_exp_is_product_of_factors() -> None:
    x = 0.5 + 0.5 * torch.rand(2, 5, 3, dtype=DT)
    d = segsum_exp(torch.log(x))
    for t, j in itertools.product(range(5), range(5)):
        expect = torch.prod(x[:, j + 1 : t + 1], dim=1) if j <= t else torch.zeros(2, 3, dtype=DT)
        torch.testing.assert_close(d[:, t, j], expect)
