"""Every spec in specs/ as a whole model: causality, and torch backend == reference backend.

- causal specs: changing the token at position j never changes outputs before j;
  bidirectional specs (masked LM, encoders): it does (so the test can fail);
- the torch backend (chunked / structured fast paths) equals the reference backend
  (token loops / materialised matrices) on the same weights: outputs and every
  parameter's gradient, float64, at a length that is not a multiple of any chunk size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import archdsl

ROOT = Path(__file__).resolve().parent.parent
SPECS = [s for s in sorted((ROOT / "specs").glob("*.arch")) if archdsl.load(s).ir.model is not None]
SMALL = dict(d_model=32, heads=2, layers=2, vocab=20)
# Spec-specific sizes, so that short test sequences cross mini-batch and segment ends.
SHORT = dict(chunk=4, segment=8)


def _sizes(spec: Path) -> dict[str, int]:
    names = {p.name for p in archdsl.load(spec).ir.params}
    return {**SMALL, **{k: v for k, v in SHORT.items() if k in names}}


def _model(spec: Path, backend: str = "torch", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return archdsl.build(spec, backend=backend, **_sizes(spec)).double()


def _hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.body(model.embedding(ids))


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_causality(spec: Path) -> None:
    model = _model(spec)
    causal = archdsl.load(spec).ir.model.head.kind == "causal_lm"
    ids = torch.randint(0, 20, (2, 29))
    j = 17
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1 + torch.randint(0, 18, (2,))) % 20
    with torch.no_grad():
        before, after = _hidden(model, ids), _hidden(model, changed)
    if causal:
        torch.testing.assert_close(before[:, :j], after[:, :j], rtol=0, atol=1e-9)
        assert not torch.allclose(before[:, j], after[:, j])
    else:
        assert (before[:, :j] - after[:, :j]).abs().max() > 1e-6


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_torch_backend_matches_reference(spec: Path) -> None:
    fast = _model(spec, "torch")
    slow = _model(spec, "reference")
    slow.load_state_dict(fast.state_dict())
    ids = torch.randint(0, 20, (2, 71))
    target = torch.randn(fast(ids).shape, dtype=torch.float64)
    out_fast = fast(ids)
    out_slow = slow(ids)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-7, atol=1e-8)
    (out_fast * target).sum().backward()
    (out_slow * target).sum().backward()
    slow_grads = dict(slow.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        torch.testing.assert_close(p.grad, slow_grads[name].grad, rtol=1e-6, atol=1e-8, msg=name)
