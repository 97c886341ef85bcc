"""Every class x {causal, bidirectional} x {fixed, data}: fast path == materialize() @ x.

Outputs and gradients (w.r.t. x and every parameter), float64, at lengths that are not
multiples of any chunk or block size. The two sides are the registry's two functions,
reached through `core_for_mixer` with the "torch" and "reference" backends.
"""

from __future__ import annotations

import pytest
import torch
from mixer_cases import MAKERS

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.core import core_for_mixer

D = 5


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], weight: torch.Tensor) -> list:
    return list(torch.autograd.grad((out * weight).sum(), leaves))


@pytest.mark.parametrize("data", [False, True], ids=["fixed", "data"])
@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
@pytest.mark.parametrize("cls", sorted(MAKERS))
@pytest.mark.parametrize("length", [37, 100])
def test_fast_path_matches_materialized_matrix(
    cls: str, direction: str, data: bool, length: int
) -> None:
    torch.manual_seed(hash((cls, direction, data, length)) % 2**31)
    params = MAKERS[cls](length, direction == "causal", data)
    mixer = MatrixMixer(name="m", cls=cls, direction=direction, data=data)  # type: ignore[arg-type]
    x = torch.randn(2, length, 3, D, dtype=torch.float64, requires_grad=True)

    fast = core_for_mixer(mixer, backend="torch")(x, **params)
    ref = core_for_mixer(mixer, backend="reference")(x, **params)
    torch.testing.assert_close(fast, ref)

    leaves = [x] + [v for v in params.values() if isinstance(v, torch.Tensor)]
    weight = torch.randn_like(ref)
    for g_fast, g_ref in zip(_grads(fast, leaves, weight), _grads(ref, leaves, weight)):
        torch.testing.assert_close(g_fast, g_ref)


@pytest.mark.parametrize("cls", sorted(MAKERS))
def test_causal_forms_ignore_the_future_and_bidirectional_forms_do_not(cls: str) -> None:
    """Changing x_j changes no output before j (causal) and some output before j (bidir)."""
    length, j = 40, 23
    for direction in ("causal", "bidirectional"):
        torch.manual_seed(1)
        params = MAKERS[cls](length, direction == "causal", True)
        mixer = MatrixMixer(name="m", cls=cls, direction=direction)  # type: ignore[arg-type]
        run = core_for_mixer(mixer)
        x = torch.randn(2, length, 3, D, dtype=torch.float64)
        x2 = x.clone()
        x2[:, j] += torch.randn_like(x2[:, j])
        with torch.no_grad():
            y = run(x, **params)
            before = (y - run(x2, **params))[:, :j].abs().max().item()
        # FFT paths mix every position, so "unchanged" means at float64 round-off.
        roundoff = 1e-12 * y.abs().max().item()
        if direction == "causal":
            assert before <= roundoff, f"{cls}: causal output before {j} changed by {before}"
        else:
            assert before > 1e-6, f"{cls}: bidirectional output before {j} did not change"
