"""The recurrent state of a memory, as it crosses the functional-core boundary."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class MemoryState(NamedTuple):
    """State carried between calls (split-and-continue) and by `step`.

    ``weights``: the memory's parameters W, batched per sequence and head:
      matrix: ``(W,)`` with W ``[B, H, dk, dv]`` (read ``q @ W``);
      vector: ``(w,)`` with w ``[B, H, dk]`` (dk == dv, read ``q * w``);
      mlp: one ``[B, H, d_in, d_out]`` tensor per layer (biases, if any, follow).
    ``momentum``: the momentum S of the `momentum` learner, same shapes as ``weights``,
      else None.
    ``extra``: anything else a rule must carry (e.g. Moneta's un-normalised accumulator
      A, or the gradients of a partly filled mini-batch); empty when unused.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] | None = None
    extra: tuple[Tensor, ...] = ()
