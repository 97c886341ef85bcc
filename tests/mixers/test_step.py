"""Recurrent generation: `MatrixMixerLayer.step` token by token == `forward` (float64).

Every causal class with a recurrent form (semiseparable, incl. Mamba's selective scan;
quasiseparable; lowrank; vandermonde, data and fixed), with and without a short conv;
the others, and every bidirectional mixer, refuse with a NotImplementedError naming the
class.
"""

from __future__ import annotations

import pytest
import torch

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.layer import MatrixMixerLayer

F64 = torch.float64
RECURRENT = [
    ("semiseparable", True, "explicit"),
    ("semiseparable", True, "selective"),
    ("quasiseparable", True, "explicit"),
    ("lowrank", True, "explicit"),
    ("vandermonde", True, "explicit"),
    ("vandermonde", False, "explicit"),
]


def _layer(cls: str, data: bool, kernel: str, conv: int, direction: str = "causal"):
    mixer = MatrixMixer(
        name="m",
        cls=cls,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        data=data,
        kernel=kernel,  # type: ignore[arg-type]
        state=4,
        conv=conv,
        headdim=4,
        max_len=32,
    )
    torch.manual_seed(11)
    return MatrixMixerLayer(mixer, 8).to(F64)


def _perturb(layer: MatrixMixerLayer) -> None:
    """Random, non-trivial values for every parameter (D = 1, zero biases hide mistakes)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("conv", [0, 4])
@pytest.mark.parametrize(("cls", "data", "kernel"), RECURRENT)
def test_stepping_token_by_token_equals_forward(cls: str, data: bool, kernel: str, conv: int):
    layer = _layer(cls, data, kernel, conv)
    _perturb(layer)
    u = torch.randn(2, 23, 8, dtype=F64)
    with torch.no_grad():
        want = layer(u)
        state = layer.initial_state(2)
        got = []
        for t in range(u.shape[1]):
            y, state = layer.step(u[:, t], state)
            got.append(y)
    torch.testing.assert_close(torch.stack(got, dim=1), want)


@pytest.mark.parametrize("cls", ["dense", "attention", "toeplitz", "cauchy"])
def test_classes_without_a_recurrent_form_say_so(cls: str) -> None:
    layer = _layer(cls, True, "explicit", 3)
    with pytest.raises(NotImplementedError, match=f"the {cls} class has no recurrent step"):
        layer.initial_state(1)
    with pytest.raises(NotImplementedError, match=cls):
        layer.step(torch.zeros(1, 8, dtype=F64), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", ["semiseparable", "quasiseparable", "lowrank"])
def test_bidirectional_mixers_have_no_step(cls: str) -> None:
    layer = _layer(cls, True, "explicit", 3, direction="bidirectional")
    with pytest.raises(NotImplementedError, match=f"{cls}, bidirectional"):
        layer.initial_state(1)
