"""Entry points that run a mixer on its generated Triton kernel, in the layers' conventions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention
from archdsl.memory.state import MemoryState


def attention_entry(att: Attention) -> Callable[..., Tensor]:
    """(q, k, v [B, N, H, D] incl. persistent tokens, mask, att, scale) -> o [B, N, H, D]."""
    from archdsl.codegen.triton.ops import TritonAttention
    from archdsl.codegen.triton_kernels import _attention_flags
    from archdsl.runtime.positions import alibi_slopes

    flags = _attention_flags(att)

    def run(
        q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor, att: Attention, scale: float
    ) -> Tensor:
        del mask  # the kernel builds the same mask from its constexpr flags
        slopes = (
            alibi_slopes(q.shape[2]).to(q.device, torch.float32) if att.pos == "alibi" else None
        )
        out: Tensor = TritonAttention.apply(q, k, v, flags, slopes, float(scale))
        return out

    return run


def memory_entry(mem: Memory) -> Callable[..., Any]:
    """The chunked gated-linear rule's signature, on the generated kernel."""
    from archdsl.codegen.triton.ops import triton_gated_linear

    def run(
        mem_: Memory,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        lr: Tensor | float | None,
        decay: Tensor | None = None,
        momentum: Tensor | None = None,
        delta: Tensor | None = None,
        scale: float | None = None,
        initial_state: Tensor | MemoryState | None = None,
        output_final_state: bool = False,
    ) -> tuple[Tensor, MemoryState | None]:
        del mem_, momentum, delta
        b, t, h, _ = q.shape
        if not isinstance(lr, Tensor):
            lr = q.new_full((b, t, h), 1.0 if lr is None else float(lr))
        if lr.dim() == 4:  # per-channel lr: fold into k (k * lr), as the torch rule does
            k, lr = k * lr, torch.ones_like(lr[..., 0])
        w0 = initial_state.weights[0] if isinstance(initial_state, MemoryState) else initial_state
        stateful = w0 is not None or output_final_state
        if stateful and w0 is None:
            w0 = q.new_zeros(b, h, q.shape[-1], v.shape[-1])
        if scale is None:
            scale = mem.features.scale if mem.features.scale is not None else q.shape[-1] ** -0.5
        o, final = triton_gated_linear(q, k, v, decay, lr, scale, w0, stateful)
        o = o.to(q.dtype)
        if not output_final_state or final is None:
            return o, None
        return o, MemoryState(weights=(final.to(q.dtype),))

    return run
