"""MatrixMixerLayer: Hydra block vs the hand-written reference; backends agree; causality."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.layer import MatrixMixerLayer
from tests.references.hydra import HydraReference, init_like_paper

F64 = torch.float64
CLASSES = [
    "dense",
    "attention",
    "lowrank",
    "toeplitz",
    "vandermonde",
    "cauchy",
    "semiseparable",
    "quasiseparable",
]
# Reference name -> layer name, where they differ.
RENAMES = {
    "conv1d.weight": "conv.conv1d.weight",
    "conv1d.bias": "conv.conv1d.bias",
    "norm_weight": "norm.weight",
}


def test_hydra_layer_matches_reference_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    d_model, n, conv, headdim, length = 8, 6, 7, 4, 37
    ref = HydraReference(d_model, n, conv, expand=2, headdim=headdim).to(F64)
    init_like_paper(ref)
    mixer = MatrixMixer(
        name="hydra",
        cls="quasiseparable",
        direction="bidirectional",
        state=n,
        conv=conv,
        expand=2,
        headdim=headdim,
        gate=True,
    )
    layer = MatrixMixerLayer(mixer, d_model).to(F64)
    ours = dict(layer.named_parameters())
    assert len(ours) == len(dict(ref.named_parameters()))
    with torch.no_grad():
        for name, value in ref.named_parameters():
            ours[RENAMES.get(name, name)].copy_(value)

    u = torch.randn(2, length, d_model, dtype=F64, requires_grad=True)
    y, y_ref = layer(u), ref(u)
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum(), [u, *ours.values()])
    ref_params = dict(ref.named_parameters())
    g_ref_all = torch.autograd.grad((y_ref * w).sum(), [u, *ref_params.values()])
    g_ref = dict(zip(["u", *(RENAMES.get(k, k) for k in ref_params)], g_ref_all))
    torch.testing.assert_close(g[0], g_ref["u"])
    for (name, _), grad in zip(ours.items(), g[1:]):
        torch.testing.assert_close(grad, g_ref[name], msg=_prefixed(name))


def _layer(cls: str, direction: str, data: bool, backend: str = "torch") -> MatrixMixerLayer:
    mixer = MatrixMixer(
        name="m",
        cls=cls,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        data=data,
        state=4,
        conv=3,
        headdim=4,
        max_len=48,
    )
    torch.manual_seed(7)
    return MatrixMixerLayer(mixer, 8, backend=backend).to(F64)


@pytest.mark.parametrize("data", [False, True], ids=["fixed", "data"])
@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
@pytest.mark.parametrize("cls", CLASSES)
def test_layer_torch_backend_matches_reference_backend(cls: str, direction: str, data: bool):
    fast, ref = _layer(cls, direction, data), _layer(cls, direction, data, "reference")
    ref.load_state_dict(fast.state_dict())
    u = torch.randn(2, 37, 8, dtype=F64)
    torch.testing.assert_close(fast(u), ref(u))


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
@pytest.mark.parametrize("cls", CLASSES)
def test_layer_causality(cls: str, direction: str) -> None:
    """Causal layers: changing token j never changes outputs before j; bidirectional: it does."""
    layer, j = _layer(cls, direction, True), 20
    u = torch.randn(2, 41, 8, dtype=F64)
    u2 = u.clone()
    u2[:, j] += torch.randn_like(u2[:, j])
    with torch.no_grad():
        y = layer(u)
        change = (y - layer(u2))[:, :j].abs().max().item()
    roundoff = 1e-12 * y.abs().max().item()  # FFT paths mix every position
    if direction == "causal":
        assert change <= roundoff
    else:
        assert change > 1e-6


def _prefixed(name: str) -> Callable[[str], str]:
    """An assert_close message that names the parameter and keeps torch's details."""
    return lambda message: f"{name}: {message}"
