"""Differentiable torch expressions equal to the generated kernels (used by their backward).

The backward of the Triton ops recomputes the forward with these functions under
autograd and differentiates them (first version: no generated backward kernels). They
follow the same conventions as the kernels:

- `gated_linear_torch`: q, k ``[B, T, H, dk]``, v ``[B, T, H, dv]``, log_decay ``[B, T,
  H]`` or ``[B, T, H, dk]`` or None, lr ``[B, T, H]`` or None, initial_state ``[B, H, dk,
  dv]`` or None; returns o ``[B, T, H, dv]`` and the final state ``[B, H, dk, dv]``.
  Chunked over time (``chunk_size`` tokens), exact in exact arithmetic.
- `attention_torch`: the masked softmax attention, materialised (``O(T^2)`` memory).
"""

from __future__ import annotations

import torch

from archdsl.codegen.triton.spec import AttentionFlags


def gated_linear_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    lr: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """o_t = scale q_t W_t with W_t = alpha_t W_{t-1} + lr_t k_t v_t^T, chunk by chunk."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    # [B, H, T, D] in the compute dtype
    qh, kh, vh = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    if lr is not None:
        kh = kh * lr.transpose(1, 2).to(dtype)[..., None]
    g = None if log_decay is None else log_decay.transpose(1, 2).to(dtype)
    state = q.new_zeros((B, H, DK, DV), dtype=dtype)
    if initial_state is not None:
        state = state + initial_state.to(dtype)
    outputs = []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(start + chunk_size, T))
        gc = None if g is None else g[:, :, sl]
        o_chunk, state = _gated_linear_chunk(qh[:, :, sl], kh[:, :, sl], vh[:, :, sl], gc, state)
        outputs.append(o_chunk)
    o = torch.cat(outputs, dim=2) * scale
    return o.transpose(1, 2).to(q.dtype), state


def _gated_linear_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk ([B, H, C, D] tensors; g [B, H, C] or [B, H, C, dk]) -> (unscaled o, state)."""
    C = q.shape[2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if g is None:
        scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
        return q @ state + scores @ v, state + k.transpose(-1, -2) @ v
    b = g.cumsum(dim=2)
    b_last = b[:, :, -1:]
    if g.dim() == 3:  # per head
        gap = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
        scores = (q @ k.transpose(-1, -2)) * gap.exp()
        o = (q @ state) * b.exp()[..., None] + scores @ v
        k_to_end = k * (b_last - b).exp()[..., None]
        new_state = state * b_last.exp()[..., None] + k_to_end.transpose(-1, -2) @ v
        return o, new_state
    # per key channel: [B, H, C, C, dk] gaps, masked in log space before exp
    gap = b[:, :, :, None, :] - b[:, :, None, :, :]
    gap = gap.masked_fill(~causal[:, :, None], float("-inf"))
    scores = torch.einsum("bhik,bhjk,bhijk->bhij", q, k, gap.exp())
    o = (q * b.exp()) @ state + scores @ v
    k_to_end = k * (b_last - b).exp()
    new_state = state * b_last.exp().transpose(-1, -2) + k_to_end.transpose(-1, -2) @ v
    return o, new_state


def attention_mask(
    T: int, flags: AttentionFlags, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean ``[T, T]`` mask, True where query i may attend key j (see `AttentionFlags`)."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    local = torch.ones(T, T, dtype=torch.bool, device=device)
    if flags.is_causal:
        local &= j <= i
    if flags.window > 0:
        local &= (i - j).abs() < flags.window
    prefix = (i < flags.prefix) & (j < flags.prefix)
    sink = (j < flags.sinks).expand(T, T)
    if flags.is_causal:
        sink = sink & (j <= i)
    return local | prefix | sink


def attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    flags: AttentionFlags,
    alibi_slopes: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Masked softmax attention on ``[B, T, H, D]``, materialised; rows see >= 1 key."""
    T = q.shape[1]
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qh, kh, vh = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) * scale
    if alibi_slopes is not None:
        pos = torch.arange(T, device=q.device)
        distance = (pos[:, None] - pos[None, :]).abs().to(dtype)
        scores = scores - alibi_slopes.to(dtype)[:, None, None] * distance
    mask = attention_mask(T, flags, q.device)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (probs @ vh).transpose(1, 2).to(q.dtype)
