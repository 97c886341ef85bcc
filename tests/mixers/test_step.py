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
from archdsl.mixers.recurrent import CHUNKED_FORMS, chunked_from_state, scan_step

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


@pytest.mark.parametrize("form", sorted(CHUNKED_FORMS))
def test_chunked_from_a_state_equals_stepping(form: str) -> None:
    """`chunked_from_state` (a prompt in one chunked call, from a nonzero state) gives
    the outputs and the final state of `scan_step` token by token; H, N, P all differ."""
    cls, _, kind = form.partition("/")
    data = kind != "fixed"
    kernel = "selective" if form == "selective" else "explicit"
    cls = "semiseparable" if form == "selective" else cls
    mixer = MatrixMixer(
        name="m",
        cls=cls,  # type: ignore[arg-type]
        data=data,
        kernel=kernel,  # type: ignore[arg-type]
        state=6,
        headdim=4,
        max_len=32,
    )
    torch.manual_seed(5)
    layer = MatrixMixerLayer(mixer, 10).to(F64)  # H = 5 heads of P = 4, N = 6 (3 modes)
    assert (layer.heads, layer.headdim) == (5, 4)
    u = torch.randn(2, 11, layer.in_proj.in_features, dtype=F64)
    with torch.no_grad():
        _, xt, dts = layer._project(u)
        x, _, params = layer._mixer_inputs(torch.nn.functional.silu(xt), dts)
        start = layer.initial_state(2)
        start = start._replace(scan=torch.randn_like(start.scan))
        y, final = chunked_from_state(form, x, params, start.scan)
        state, ys = start, []
        for t in range(x.shape[1]):
            one = {k: (v[:, t : t + 1] if _timed(k, v, form) else v) for k, v in params.items()}
            y_t, scan, _ = scan_step(form, x[:, t], one, state)
            state = state._replace(scan=scan)
            ys.append(y_t)
    torch.testing.assert_close(y, torch.stack(ys, dim=1))
    torch.testing.assert_close(final, state.scan)


def _timed(name: str, value: object, form: str) -> bool:
    """Whether a parameter has a time axis (sliced per token for `scan_step`)."""
    fixed = ("a", "d", "log_z", "scale", "log_dt", "b", "c") if form == "vandermonde/fixed" else ()
    return isinstance(value, torch.Tensor) and name not in ("a", "d", "log_z", "scale", *fixed)
