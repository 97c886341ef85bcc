"""`scan_both_directions` (both directions through the memories' segment engine) against
two separate causal scans, the backward one on explicitly flipped inputs.

Covers shift on/off, per-head and per-key-channel decays (one time-invariant, as the
Vandermonde mixer passes it), lr on one direction only, parameters with batch 1
broadcast against x, lengths that are not a multiple of the chunk, segments forced down
to one chunk, and both the workspace (no autograd) and the autograd paths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import archdsl.mixers.ssd as ssd_module
from archdsl.mixers.semiseparable import ScanParams, scan_both_directions
from archdsl.mixers.ssd import chunked_ssd

F64 = torch.float64
B, T, H, N, D = 2, 75, 3, 4, 5


def shifted(y: Tensor, by: int) -> Tensor:
    """``out[:, i] = y[:, i - by]`` (zeros where out of range), by in {0, 1}."""
    if by == 0:
        return y
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)


def two_scans(x: Tensor, fw: ScanParams, bw: ScanParams, shift: bool, chunk: int) -> Tensor:
    lr_fw, lr_bw = fw.lr, bw.lr
    y_fw = chunked_ssd(fw.c, fw.b, x, log_decay=fw.log_a, lr=lr_fw, chunk_size=chunk)[0]
    flip = [None if t is None else t.flip(1) for t in (bw.c, bw.b, bw.log_a, lr_bw)]
    assert flip[0] is not None and flip[1] is not None
    y_bw = chunked_ssd(
        flip[0], flip[1], x.flip(1), log_decay=flip[2], lr=flip[3], chunk_size=chunk
    )[0]
    by = 1 if shift else 0
    return shifted(y_fw, by) + shifted(y_bw, by).flip(1)


def params(decay: str, lr: str, seed: int) -> tuple[ScanParams, ScanParams]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    def log_a() -> Tensor:
        if decay == "head":
            return -F.softplus(rnd(B, T, H))
        if decay == "channel":
            return -F.softplus(rnd(B, T, H, N))
        return (-torch.rand(H, N, generator=gen, dtype=F64)).expand(1, T, H, N)  # fixed

    rates = {"both": (rnd(B, T, H).exp(), rnd(B, T, H).exp()), "fw": (rnd(B, T, H).exp(), None)}
    lr_fw, lr_bw = rates.get(lr, (None, None))
    fw = ScanParams(rnd(1, T, H, N), rnd(B, T, H, N), log_a(), lr_fw)
    bw = ScanParams(rnd(B, T, H, N), rnd(1, T, H, N), log_a(), lr_bw)
    return fw, bw


@pytest.fixture(params=["default", "one_chunk"])
def segments(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "one_chunk":
        monkeypatch.setattr(ssd_module, "SEGMENT_TOKEN_HEADS", 1)
        monkeypatch.setattr(ssd_module, "MIN_SEGMENT_CHUNKS", 1)
    return str(request.param)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize(("decay", "lr"), [("head", "both"), ("channel", "fw"), ("fixed", "none")])
def test_matches_two_flipped_scans(segments: str, shift: bool, decay: str, lr: str) -> None:
    fw, bw = params(decay, lr, seed=7)
    x = torch.randn(B, T, H, D, dtype=F64)
    base = torch.randn(B, T, H, D, dtype=F64)
    with torch.no_grad():
        got = scan_both_directions(x, fw, bw, shift=shift, base=base.clone(), chunk_size=16)
    if lr == "fw":  # the scan gives the other direction lr = 1
        bw = bw._replace(lr=torch.ones(B, T, H, dtype=F64))
    ref = base + two_scans(x, fw, bw, shift, chunk=16)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("shift", [False, True])
def test_gradients_match_two_flipped_scans(segments: str, shift: bool) -> None:
    fw, bw = params("head", "both", seed=8)
    x = torch.randn(B, T, H, D, dtype=F64)
    leaves = [x, *fw, *bw]
    for t in leaves:
        assert t is not None
        t.requires_grad_()
    w = torch.randn(B, T, H, D, dtype=F64)
    got = scan_both_directions(x, fw, bw, shift=shift, chunk_size=16)
    ref = two_scans(x, fw, bw, shift, chunk=16)
    torch.testing.assert_close(got, ref)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((got * w).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * w).sum(), inputs)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
