"""Momentum with beta = 0 is plain gradient descent: the chunked mini-batch TTT (general
and fused paths) must give gd's outputs, with finite gradients (``log beta`` is floored;
unfloored, beta = 0 made -inf - -inf = NaN in the prefix sums)."""

from __future__ import annotations

import pytest
import torch
from test_reference_helpers import rand
from test_ttt_helpers import B, H, T, arguments, build, initial, unit_keys

from archdsl.memory.chunked_ttt import chunked_minibatch_ttt
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState


@pytest.mark.parametrize("structure", ["matrix", "mlp"])
@pytest.mark.parametrize("batch", [1, 4])
def test_momentum_with_zero_beta_is_gd(structure: str, batch: int) -> None:
    torch.manual_seed(0)
    with_momentum = build(structure, "decay_after", "momentum", batch)
    plain = build(structure, "decay_after", "gd", batch)
    q, k, v = rand(B, T, H, 4), unit_keys(rand(B, T, H, 4)), rand(B, T, H, 4)
    kw = arguments(with_momentum)
    beta = torch.zeros(B, T, H, dtype=torch.float64, requires_grad=True)
    kw["momentum"] = beta
    lr = kw["lr"]
    assert isinstance(lr, torch.Tensor)
    lr.requires_grad_(True)
    weights = initial(with_momentum).weights
    zero_mom = tuple(torch.zeros_like(w) for w in weights)
    gd_kw = {n: x for n, x in kw.items() if n != "momentum"}
    o_gd, _ = memory_reference(plain, q, k, v, **gd_kw, initial_state=MemoryState(weights))  # type: ignore[arg-type]
    o, _ = chunked_minibatch_ttt(
        with_momentum,
        q,
        k,
        v,
        **kw,
        initial_state=MemoryState(weights, zero_mom),  # type: ignore[arg-type]
    )
    torch.testing.assert_close(o, o_gd, atol=1e-10, rtol=1e-10)
    (grad,) = torch.autograd.grad(o.sum(), lr, retain_graph=True)
    (grad_gd,) = torch.autograd.grad(o_gd.sum(), lr)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad_gd, atol=1e-8, rtol=1e-8)
    # d o / d beta at beta = 0 is finite: the token loop's (which takes no log) is the check
    o_ref, _ = memory_reference(
        with_momentum,
        q,
        k,
        v,
        **kw,
        initial_state=MemoryState(weights, zero_mom),  # type: ignore[arg-type]
    )
    (d_beta,) = torch.autograd.grad(o.sum(), beta)
    (d_beta_ref,) = torch.autograd.grad(o_ref.sum(), beta)
    assert torch.isfinite(d_beta).all()
    torch.testing.assert_close(d_beta, d_beta_ref, atol=1e-8, rtol=1e-8)
