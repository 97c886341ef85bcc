"""Scratch buffers reused across the segments of one chunked call (CPU speed, no autograd)."""

from __future__ import annotations

import math

from torch import Tensor


class Workspace:
    """Buffers reused by every segment of one call, or nothing at all under autograd.

    Enabled (no gradient is recorded), each intermediate is written with ``out=`` into a
    buffer allocated once per call and kept in cache from one segment to the next; fresh
    allocations the size of a segment cost page faults on every segment, a large part of
    the runtime on CPU. Disabled (autograd), ``buf`` and ``same`` return None, and the
    same calls allocate their results as usual (``out=None``).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._buffers: dict[str, Tensor] = {}

    def buf(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """The buffer ``name`` viewed as ``shape`` (contiguous; re-allocated when the
        number of elements or the dtype changes)."""
        if not self.enabled:
            return None
        old = self._buffers.get(name)
        if old is None or old.numel() != math.prod(shape) or old.dtype != like.dtype:
            old = self._buffers[name] = like.new_empty(shape)
        return old.view(shape)

    def same(self, x: Tensor) -> Tensor | None:
        """``x`` itself as the ``out=`` of an elementwise op (in place), or None."""
        return x if self.enabled else None
