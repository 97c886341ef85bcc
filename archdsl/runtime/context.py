"""What generated modules call at build time: fresh layers for mixers, ops and heads.

Generated code never decides semantics itself; it asks a `BuildContext` for the module
of each call site, by name, with resolved options. The context holds the IR (from which
mixer declarations are read) and the backend.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Arch
from archdsl.runtime.attention import AttentionLayer
from archdsl.runtime.ops import ShortConv, make_op
from archdsl.vocab import BACKENDS


class BuildContext:
    def __init__(self, arch: Arch, backend: str = "torch", kernels: Any = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.arch = arch
        self.backend = backend
        self.kernels = kernels

    @property
    def d_model(self) -> int:
        return self.arch.d_model

    def op(self, name: str, width: int, **options: Any) -> nn.Module:
        return make_op(name, width, **options)

    def mixer(self, name: str) -> nn.Module:
        decl = self.arch.mixer(name)
        if decl is None:  # pragma: no cover - resolve guarantees it
            raise KeyError(name)
        d, h = self.arch.d_model, self.arch.heads
        if isinstance(decl, Attention):
            layer = AttentionLayer(decl, d, h, self.backend)
            if self.backend == "triton":
                layer.kernel = _triton_attention(self.kernels, name)
            return layer
        if isinstance(decl, Conv):
            return ShortConv(d, decl.kernel, decl.causal, decl.act)
        if isinstance(decl, Memory):
            from archdsl.memory.layer import MemoryLayer

            # a memory reaches its Triton kernel through archdsl.memory.rules.memory_function
            return MemoryLayer(decl, d, h, backend=self.backend)
        assert isinstance(decl, MatrixMixer)
        from archdsl.mixers.layer import MatrixMixerLayer

        backend = "torch" if self.backend == "triton" else self.backend
        return MatrixMixerLayer(decl, d, h, backend=backend)


def _triton_attention(kernels: Any, name: str) -> Any:
    fn = getattr(kernels, f"attention_{name}", None) if kernels is not None else None
    if fn is None:
        warnings.warn(
            f"mixer '{name}': no generated Triton kernel; using the torch path", stacklevel=3
        )
    return fn
