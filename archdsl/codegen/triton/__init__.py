"""Triton code generator: `KernelSpec` -> one module of generated kernels -> autograd ops.

- `emit_triton_module(specs) -> str`: deterministic source (see `emit`);
- `load_triton_module(source, name) -> module`: cached by a hash of the source;
- `triton_gated_linear(...)`, `triton_attention(...)`, `TritonGatedLinear`,
  `TritonAttention`: autograd ops on generated kernels (imported lazily: they need torch).
"""

from __future__ import annotations

from typing import Any

from archdsl.codegen.triton.emit import emit_triton_module
from archdsl.codegen.triton.loader import load_triton_module
from archdsl.codegen.triton.spec import AttentionFlags, GatedLinearFlags, KernelSpec

_OPS = ("TritonAttention", "TritonGatedLinear", "triton_attention", "triton_gated_linear")

__all__ = [
    "AttentionFlags",
    "GatedLinearFlags",
    "KernelSpec",
    "emit_triton_module",
    "load_triton_module",
    *_OPS,
]


def __getattr__(name: str) -> Any:
    if name in _OPS:
        from archdsl.codegen.triton import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
