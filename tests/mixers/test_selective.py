"""Mamba's S6 (semiseparable, kernel = selective): scan, functional core and whole block.

- the chunk-parallel scan against the token loop of `tests/references/mamba_scan.py` at
  several chunk sizes (none dividing T), and split-and-continue through its state;
- the functional core's two backends (fast scan, per-channel materialised matrices);
- `MatrixMixerLayer(cls=semiseparable, kernel=selective)` against the hand-written Mamba
  block `MambaBlockReference` (weights copied by name), outputs and gradients, float64.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers import selective_scan as selective_scan_module
from archdsl.mixers.core import core_for_mixer
from archdsl.mixers.layer import MatrixMixerLayer
from archdsl.mixers.selective_scan import selective_scan, selective_scan_chunked
from tests.references.mamba_scan import MambaBlockReference, selective_scan_loop

F64 = torch.float64
S6 = MatrixMixer(name="s6", cls="semiseparable", kernel="selective", state=5, conv=4, expand=2)


def _scan_inputs(bsz: int = 2, t: int = 45, h: int = 2, p: int = 3, n: int = 4) -> dict:
    return {
        "x": torch.randn(bsz, t, h, p, dtype=F64),
        "dt": F.softplus(torch.randn(bsz, t, h, p, dtype=F64)),
        "a": -torch.rand(h, p, n, dtype=F64) * 3 - 0.05,
        "b": torch.randn(bsz, t, h, n, dtype=F64),
        "c": torch.randn(bsz, t, h, n, dtype=F64),
        "d": torch.randn(h, p, dtype=F64),
    }


@pytest.mark.parametrize("chunk", [None, 4, 16, 64])
def test_scan_matches_token_loop_at_any_chunk_size(chunk: int | None) -> None:
    torch.manual_seed(0)
    p = _scan_inputs()
    want = selective_scan_loop(p["x"], p["dt"], p["a"], p["b"], p["c"], p["d"])
    x = p.pop("x")
    torch.testing.assert_close(selective_scan(x, chunk_size=chunk, **p), want)


def test_inference_token_loop_matches_reference_and_chunked_scan() -> None:
    """Without autograd, large states take the token loop (`LOOP_MIN_STATE`)."""
    torch.manual_seed(3)
    p = _scan_inputs(bsz=1, t=37, h=2, p=64, n=64)  # 8192 state elements per token
    assert selective_scan_module._loop_is_faster(p["x"], p["a"])
    want = selective_scan_loop(p["x"], p["dt"], p["a"], p["b"], p["c"], p["d"])
    x = p.pop("x")
    with torch.no_grad():
        got = selective_scan(x, **p)
        chunked = selective_scan(x, chunk_size=8, **p)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(chunked, want)
    x.requires_grad_(True)
    assert not selective_scan_module._loop_is_faster(x, p["a"])  # autograd: chunked


def test_scan_continues_from_its_final_state() -> None:
    torch.manual_seed(1)
    p = _scan_inputs(t=50)
    whole, s_whole = selective_scan_chunked(chunk_size=8, **p)
    first = {k: (v[:, :21] if v.dim() == 4 and k not in ("a",) else v) for k, v in p.items()}
    rest = {k: (v[:, 21:] if v.dim() == 4 and k not in ("a",) else v) for k, v in p.items()}
    y1, s1 = selective_scan_chunked(chunk_size=8, **first)
    y2, s2 = selective_scan_chunked(chunk_size=8, initial_state=s1, **rest)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), whole)
    torch.testing.assert_close(s2, s_whole)


def test_core_backends_agree_and_refuse_bidirectional() -> None:
    torch.manual_seed(2)
    p = _scan_inputs(t=30)
    x = p.pop("x")
    fast = core_for_mixer(S6, backend="torch")(x, **p)
    ref = core_for_mixer(S6, backend="reference")(x, **p)
    torch.testing.assert_close(fast, ref)
    with pytest.raises(ValueError, match="selective scan .* is causal"):
        core_for_mixer(S6.model_copy(update={"direction": "bidirectional"}))


def test_layer_init_follows_the_paper() -> None:
    layer = MatrixMixerLayer(S6, 20)
    n = S6.state
    a = -layer.s6.A_log.exp()
    torch.testing.assert_close(a, -torch.arange(1, n + 1, dtype=a.dtype).expand_as(a))  # S4D-real
    assert layer.s6.dt_proj.in_features == 2  # rank ceil(20 / 16)
    dt0 = F.softplus(layer.s6.dt_proj.bias)
    assert dt0.min() >= 1e-3 - 1e-7 and dt0.max() <= 0.1 + 1e-7


def _reference_name(name: str) -> str:
    """Layer parameter name -> the reference's (official Mamba) name."""
    if name.startswith("conv.conv1d"):
        return name.removeprefix("conv.")
    return name.removeprefix("s6.")


def _in_proj_to_ours(w: torch.Tensor, d_inner: int) -> torch.Tensor:
    """The reference's in_proj rows are x | z; the layer's are z | x."""
    return torch.cat([w[d_inner:], w[:d_inner]])


def test_mamba_layer_matches_reference_block_outputs_and_gradients() -> None:
    torch.manual_seed(3)
    d_model, length = 20, 37
    ref = MambaBlockReference(d_model, S6.state, S6.conv, expand=2).to(F64)
    layer = MatrixMixerLayer(S6.model_copy(update={"headdim": 8}), d_model).to(F64)
    ours, theirs = dict(layer.named_parameters()), dict(ref.named_parameters())
    assert {_reference_name(n) for n in ours} == set(theirs)
    with torch.no_grad():
        for name, value in ours.items():
            src = theirs[_reference_name(name)]
            value.copy_(_in_proj_to_ours(src, ref.d_inner) if name == "in_proj.weight" else src)

    u = torch.randn(2, length, d_model, dtype=F64, requires_grad=True)
    y, y_ref = layer(u), ref(u)
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum(), [u, *ours.values()])
    g_ref = torch.autograd.grad((y_ref * w).sum(), [u, *theirs.values()])
    torch.testing.assert_close(g[0], g_ref[0])
    by_name = dict(zip(theirs, g_ref[1:]))
    for name, grad in zip(ours, g[1:]):
        want = by_name[_reference_name(name)]
        if name == "in_proj.weight":
            want = _in_proj_to_ours(want, ref.d_inner)
        torch.testing.assert_close(grad, want, msg=_prefixed(name))


def _prefixed(name: str) -> Callable[[str], str]:
    """An assert_close message that names the parameter and keeps torch's details."""
    return lambda message: f"{name}: {message}"
