"""Long sequences run segment by segment (state carried between calls of the chunked
function, both directions stacked per segment): results must not depend on it.

The segment length is forced down to one chunk (64 tokens), so that T = 150 runs as
three segments, the last one partial; fast path == materialised matrix, outputs and
gradients (float64), for every class that goes through the chunked scan.
"""

from __future__ import annotations

import pytest
import torch
from mixer_cases import MAKERS

import archdsl.mixers.ssd as ssd_module
from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.core import core_for_mixer

SCAN_CASES = [
    ("semiseparable", "causal"),
    ("semiseparable", "bidirectional"),
    ("quasiseparable", "causal"),
    ("quasiseparable", "bidirectional"),
    ("lowrank", "causal"),
    ("vandermonde", "causal"),
    ("vandermonde", "bidirectional"),
]


@pytest.fixture
def one_chunk_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssd_module, "SEGMENT_TOKEN_HEADS", 1)
    monkeypatch.setattr(ssd_module, "MIN_SEGMENT_CHUNKS", 1)
    assert ssd_module.segment_length(6, 64) == 64


@pytest.mark.usefixtures("one_chunk_segments")
@pytest.mark.parametrize(("cls", "direction"), SCAN_CASES)
def test_segmented_scan_matches_materialized_matrix(cls: str, direction: str) -> None:
    torch.manual_seed(5)
    length = 150
    params = MAKERS[cls](length, direction == "causal", True)
    mixer = MatrixMixer(name="m", cls=cls, direction=direction)  # type: ignore[arg-type]
    x = torch.randn(2, length, 3, 5, dtype=torch.float64, requires_grad=True)
    fast = core_for_mixer(mixer, backend="torch")(x, **params)
    ref = core_for_mixer(mixer, backend="reference")(x, **params)
    torch.testing.assert_close(fast, ref)
    leaves = [x] + [v for v in params.values() if isinstance(v, torch.Tensor)]
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), leaves)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr)


@pytest.mark.usefixtures("one_chunk_segments")
def test_segmented_final_state_equals_one_call() -> None:
    torch.manual_seed(6)
    b, t, h, n, d = 2, 150, 3, 4, 5
    q, k = (
        torch.randn(b, t, h, n, dtype=torch.float64),
        torch.randn(b, t, h, n, dtype=torch.float64),
    )
    v = torch.randn(b, t, h, d, dtype=torch.float64)
    log_a = -torch.rand(b, t, h, dtype=torch.float64)
    s0 = torch.randn(b, h, n, d, dtype=torch.float64)
    kw = {"log_decay": log_a, "initial_state": s0, "output_final_state": True}
    o_seg, s_seg = ssd_module.chunked_ssd(q, k, v, **kw)  # type: ignore[arg-type]
    o_one, s_one = ssd_module.chunked_ssd(q, k, v, chunk_size=256, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(o_seg, o_one)
    torch.testing.assert_close(s_seg, s_one)
