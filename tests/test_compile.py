"""Generated models under ``torch.compile`` (DESIGN section 3): outputs and gradients equal
the eager module's. ``aot_eager`` traces forward and backward through dynamo and AOT
autograd without a C compiler, so it runs in CI; the host syncs of the chunked paths
(decay checks) are graph breaks, not errors. (Inductor also matched eager for these specs
and for gla, titans and mamba, forward, when tried by hand: 12-41 s each.)"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
import torch._logging

import archdsl

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["transformer", "mamba2", "hydra"]  # attention, a memory, a bidirectional mixer


@pytest.mark.parametrize("spec", SPECS)
def test_compiled_model_matches_eager(spec: str) -> None:
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = ROOT / "specs" / f"{spec}.arch"
        eager = archdsl.build(path, d_model=32, heads=2, layers=2, vocab=20).double()
    compiled = torch.compile(eager, backend="aot_eager")
    ids = torch.randint(0, 20, (2, 37))
    target = torch.randn(2, 37, 20, dtype=torch.float64)
    want = eager(ids)
    (want * target).sum().backward()
    grads = {name: p.grad.clone() for name, p in eager.named_parameters() if p.grad is not None}
    eager.zero_grad()
    got = compiled(ids)
    (got * target).sum().backward()
    torch.testing.assert_close(got, want)
    for name, p in eager.named_parameters():
        if name in grads:
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, grads[name], msg=name)
    torch._dynamo.reset()
