"""Inner losses at their edge points: zero error (the Huber norm and Yaad mixture forms
take a square root of ||e||^2, whose derivative is infinite at 0).

At e = 0 the loss is in its quadratic branch: loss 0, gradient e = 0, and every
derivative must be finite (an infinite derivative in the branch that is not taken gave
NaN through ``where``: inf * 0)."""

from __future__ import annotations

import pytest
import torch

from archdsl.ir.memory import Bias, Gate
from archdsl.memory.inner import SMOOTH_EPS, bias_loss, bias_output_grad

FORMS = ["coord", "norm", "mixture"]


def _huber(form: str) -> Bias:
    return Bias(kind="huber", delta=Gate(mode="const", value=0.5), form=form)


def _errors() -> tuple[torch.Tensor, torch.Tensor]:
    """y, v with row 0 an exact fit (e = 0), row 1 inside the radius, row 2 outside."""
    v = torch.randn(3, 4, dtype=torch.float64)
    e = torch.zeros(3, 4, dtype=torch.float64)
    e[1] = 0.01
    e[2] = 2.0
    return (v + e).requires_grad_(), v


@pytest.mark.parametrize("form", FORMS)
def test_huber_gradient_finite_at_zero_error(form: str) -> None:
    y, v = _errors()
    delta = torch.full((3,), 0.5, dtype=torch.float64)
    loss = bias_loss(_huber(form), y, v, delta)
    (grad,) = torch.autograd.grad(loss.sum(), y, create_graph=True)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[0], torch.zeros(4, dtype=torch.float64))
    # the hand-written derivative agrees with autograd, also at e = 0
    by_hand = bias_output_grad(_huber(form), y, v, delta)
    torch.testing.assert_close(by_hand, grad)
    # second order (the outer gradient through the inner step) is finite too
    (hess_row,) = torch.autograd.grad(by_hand.sum(), y)
    assert torch.isfinite(hess_row).all()


@pytest.mark.parametrize("form", FORMS)
def test_huber_branches_keep_their_values(form: str) -> None:
    """The clamp must not change the loss: compare with the textbook formulas."""
    y, v = _errors()
    delta = 0.5
    loss = bias_loss(_huber(form), y, v, torch.full((3,), delta, dtype=torch.float64))
    e = (y - v).detach()
    norm = e.norm(dim=-1)
    if form == "coord":
        a = e.abs()
        want = torch.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta)).sum(-1)
    elif form == "norm":
        want = torch.where(norm <= delta, 0.5 * norm**2, delta * (norm - 0.5 * delta))
    else:
        l1 = torch.sqrt(e * e + SMOOTH_EPS).sum(-1)
        want = torch.where(norm <= delta, 0.5 * norm**2, delta * l1)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-9)
