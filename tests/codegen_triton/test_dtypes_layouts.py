"""Half-precision inputs and non-contiguous views go through the launchers correctly.

References are computed here in float64 from the very same (rounded) inputs; for bf16
the bound is relative to the output's magnitude (bf16 keeps 8 mantissa bits; the kernels
accumulate in fp32 and may feed tensor cores tf32 operands).
"""

from __future__ import annotations

import torch

from archdsl.codegen.triton.ops import triton_attention, triton_gated_linear


def _recurrence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, scale: float
) -> torch.Tensor:
    B, T, H, dk = q.shape
    W = torch.zeros(B, H, dk, v.shape[-1], dtype=torch.float64)
    outs = []
    for t in range(T):
        W = W * log_decay[:, t].double().exp()[..., None, None]
        W = W + k[:, t].double()[..., :, None] * v[:, t].double()[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t].double(), W))
    return torch.stack(outs, dim=1)


def _causal_softmax(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    T = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhij,bjhd->bihd", probs, v.double())


def _inputs(T: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, T, 2, 16, generator=gen).to(dtype) for _ in range(3))
    log_decay = -torch.rand(1, T, 2, generator=gen)
    return q, k, v, log_decay


def test_bf16_gated_linear_and_attention() -> None:
    q, k, v, log_decay = _inputs(40, torch.bfloat16)
    o, _ = triton_gated_linear(q, k, v, log_decay, None, 0.25, None)
    ref = _recurrence(q, k, v, log_decay, 0.25)
    assert o.dtype == torch.bfloat16
    assert (o.double() - ref).abs().max() <= 1e-2 * ref.abs().max()
    a = triton_attention(q, k, v)
    ref_a = _causal_softmax(q, k, v, 0.25)
    assert a.dtype == torch.bfloat16
    assert (a.double() - ref_a).abs().max() <= 1e-2 * ref_a.abs().max()


def test_non_contiguous_views() -> None:
    q, k, v, log_decay = _inputs(33, torch.float32)
    # [B, H, T, D] storage viewed as [B, T, H, D]: strides the kernels must not assume
    qv, kv, vv = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qv.is_contiguous()
    gv = log_decay.transpose(1, 2).contiguous().transpose(1, 2)
    o, _ = triton_gated_linear(qv, kv, vv, gv, None, 0.25, None)
    torch.testing.assert_close(
        o.double(), _recurrence(q, k, v, log_decay, 0.25), rtol=1e-4, atol=1e-4
    )
    a = triton_attention(qv, kv, vv)
    torch.testing.assert_close(a.double(), _causal_softmax(q, k, v, 0.25), rtol=1e-4, atol=1e-4)
