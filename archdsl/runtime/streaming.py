"""Token-by-token generation for compiled causal language models (`StreamingModel`).

``stream = model.begin(batch)`` starts a sequence; ``model.extend(ids, stream)`` feeds
``ids [B, T]`` more tokens (a prompt, or one token at a time) and returns their logits
``[B, T, vocab]``; ``model.step(ids [B], stream)`` is ``extend`` for one token. Feeding a
sequence in any pieces gives exactly ``model(ids)``'s logits (tested for every causal
spec). The stream is updated in place (``copy.deepcopy`` branches it).

How. ``extend`` runs the generated ``forward`` on the new tokens only, with the stream
active: every module that mixes tokens then continues from its state instead of starting
a sequence (`run_streamed`):

- memories and matrix mixers with a recurrence keep their constant-size states (a memory
  runs its chunked forward from its state, so a prompt is one chunked call; a mixer steps
  token by token), short convolutions their last ``k - 1`` inputs, token shifts their last
  input;
- attention keeps a cache of every key and value (its new queries attend to the cache
  under the whole sequence's mask and positions);
- the causal long convolutions (Toeplitz / Hyena, S4's Cauchy kernel) keep their mixer
  inputs and form the new outputs as sums over them, ``O(T)`` work per token; the other
  mixers without a constant-size state (dense, data-dependent Cauchy) keep their layer
  inputs and recompute over them (`rerun_on_history`);
- per-token modules (norms, MLPs, projections, heads) need nothing;
- segmented blocks (Titans MAC) cut the new tokens at the whole sequence's segment ends
  (`stream_segments`): within a segment their modules continue, ``recall`` reads the
  memory as it was at the segment start, and attention caches the segment's memory reads
  with its tokens; at a segment end everything but the memories starts afresh.

A module called several times per token (shared weights) gets one state per call, in
call order. Not supported (refused by `begin` with the reason): heads other than a causal
LM, S4 kernels whose length is the call's (no ``max_len``: the outputs depend on the
sequence length), prefix-LM attention (its prompt tokens see later prompt tokens), and
alibi / relative positions in segmented blocks (they place a segment's memory reads by
the segment's length).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from archdsl.ir.mixers import Attention, MatrixMixer
from archdsl.ir.spec import Arch


class Stream:
    """The states of one batch of sequences being extended (see the module doc)."""

    def __init__(self, batch: int, owner: nn.Module | None = None) -> None:
        self.batch = batch
        self.owner = owner  # the model that began it (None: any)
        self.length = 0  # tokens fed so far
        self.states: dict[tuple[nn.Module, int], Any] = {}
        self._calls: Counter[nn.Module] = Counter()

    def __deepcopy__(self, memo: dict[int, Any]) -> Stream:
        """A branch: the states copied, the modules they belong to (the keys) and the
        owner shared, so that both streams continue the same model independently."""
        other = Stream(self.batch, self.owner)
        other.length = self.length
        other.states = {key: copy.deepcopy(value, memo) for key, value in self.states.items()}
        return other

    def slot(self, module: nn.Module) -> tuple[nn.Module, int]:
        """The key of this call of ``module`` in the current ``extend`` (call order)."""
        n = self._calls[module]
        self._calls[module] = n + 1
        return module, n

    def new_call(self) -> None:
        self._calls.clear()

    def marks(self, modules: list[nn.Module]) -> dict[nn.Module, int]:
        """The call counts of ``modules`` now (`rewind` returns to them)."""
        return {m: self._calls[m] for m in modules}

    def rewind(self, marks: dict[nn.Module, int]) -> None:
        """Call the modules again as the same application (a segment fed in pieces)."""
        for module, n in marks.items():  # set, not add (Counter.update adds)
            self._calls[module] = n

    def forget(self, marks: dict[nn.Module, int]) -> None:
        """Drop the states of the modules' application at ``marks`` (a new segment)."""
        for module, n in marks.items():
            self.states.pop((module, n), None)


_ACTIVE: ContextVar[Stream | None] = ContextVar("archdsl_stream", default=None)


def active_stream() -> Stream | None:
    """The stream being extended, if any (modules check it in ``forward``)."""
    return _ACTIVE.get()


@contextmanager
def _activated(stream: Stream | None) -> Iterator[None]:
    token = _ACTIVE.set(stream)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def run_streamed(
    module: nn.Module,
    x: Tensor,
    initial: Callable[[int], Any],
    advance: Callable[[Tensor, Any], tuple[Tensor, Any]],
) -> Tensor:
    """``module``'s output for the new tokens ``x [B, T, ...]``, continuing from its state
    in the active stream (``initial(batch)`` the first time); ``advance(x, state)`` returns
    the output and the next state. The module's own submodules run with no stream active."""
    stream = active_stream()
    assert stream is not None
    key = stream.slot(module)
    with _activated(None):
        state = stream.states.get(key)
        if state is None:
            state = initial(x.shape[0])
        y, stream.states[key] = advance(x, state)
    return y


def rerun_on_history(module: nn.Module, x: Tensor, forward: Callable[[Tensor], Tensor]) -> Tensor:
    """The outputs for the new tokens ``x [B, T, ...]`` of a causal module without a
    constant-size state: ``forward`` over every input so far, the last ``T`` rows kept."""

    def advance(new: Tensor, history: Tensor | None) -> tuple[Tensor, Tensor]:
        full = new if history is None else torch.cat([history, new], dim=1)
        return forward(full)[:, -new.shape[1] :], full

    return run_streamed(module, x, lambda _: None, advance)


class SegmentedState(NamedTuple):
    """A segmented block's place in the stream: tokens of the current segment seen, the
    memories' states at its start (what `recall` reads) and now."""

    position: int
    start: dict[str, Any]
    states: dict[str, Any]


def stream_segments(
    block: nn.Module,
    size: int,
    memories: dict[str, Any],
    segment: Callable[..., tuple[Tensor, dict[str, Any]]],
    *inputs: Tensor,
) -> Tensor:
    """A segmented block (``segment(size)``, Titans MAC) on the new tokens: cut at the
    segment ends of the whole sequence, each piece run by the block's ``segment(start,
    states, *pieces)``; within a segment the block's modules continue from their states
    (one application, called again), at a segment end they start afresh, as the block's
    own forward runs every segment from scratch. ``memories``: the memory layers by name
    (their ``initial_state`` starts the stream)."""
    stream = active_stream()
    assert stream is not None
    key = stream.slot(block)
    saved = stream.states.get(key)
    if saved is None:
        with _activated(None):
            empty = {m: layer.initial_state(inputs[0].shape[0]) for m, layer in memories.items()}
        saved = SegmentedState(0, empty, dict(empty))
    position, start, states = saved
    marks = stream.marks([m for m in block.modules() if m is not block])
    length, offset, outputs = inputs[0].shape[1], 0, []
    while offset < length:
        take = min(size - position, length - offset)
        stream.rewind(marks)
        y, states = segment(
            dict(start), dict(states), *(t[:, offset : offset + take] for t in inputs)
        )
        outputs.append(y)
        offset, position = offset + take, position + take
        if position == size:
            position, start = 0, dict(states)
            stream.forget(marks)
    stream.states[key] = SegmentedState(position, start, states)
    return torch.cat(outputs, dim=1)


def unsupported_reason(arch: Arch) -> str | None:
    """Why a model of ``arch`` cannot be streamed, or None."""
    if arch.model is None or arch.model.head.kind != "causal_lm":
        kind = "none" if arch.model is None else arch.model.head.kind
        return (
            f"step / extend generate tokens of a causal language model; this model's head "
            f"is {kind!r}"
        )
    segmented = [b.name for b in arch.blocks if b.segment]
    for m in arch.mixers:
        if segmented and isinstance(m, Attention) and m.pos in ("alibi", "relative"):
            return (
                f"block '{segmented[0]}' is segmented and attention '{m.name}' uses "
                f"{m.pos} positions, which place a segment's memory reads by the segment's "
                "length: streaming it is not supported"
            )
        if isinstance(m, Attention) and m.prefix > 0:
            return (
                f"attention '{m.name}' is a prefix LM (prefix = {m.prefix}): its first "
                "tokens see later ones, so earlier logits change as tokens arrive"
            )
        if isinstance(m, MatrixMixer) and length_dependent(m):
            return (
                f"mixer '{m.name}' computes S4's kernel for the length of each call "
                "(C~ = C (I - A^L), L = T): its outputs depend on how long the sequence "
                "is; give it a fixed `max_len` to stream"
            )
    return None


def length_dependent(m: MatrixMixer) -> bool:
    """Whether the mixer's outputs depend on the call's length (S4 with ``L = T``)."""
    s4 = (m.cls == "cauchy" and not m.data) or (m.cls == "toeplitz" and m.kernel == "s4")
    return s4 and m.max_len <= 0


class StreamingModel(nn.Module):
    """Base of the generated causal-LM ``Model``: ``begin``, ``extend``, ``step``."""

    arch: Arch

    def begin(self, batch: int) -> Stream:
        """A new stream of ``batch`` sequences (ValueError where streaming is not
        supported, with the reason)."""
        reason = unsupported_reason(self.arch)
        if reason is not None:
            raise ValueError(f"{self.arch.name}: {reason}")
        return Stream(batch, owner=self)

    def extend(self, ids: Tensor, stream: Stream) -> Tensor:
        """Logits ``[B, T, vocab]`` of the next ``T`` tokens ``ids [B, T]``."""
        if stream.owner is not None and stream.owner is not self:
            raise ValueError("extend: this stream was begun by another model")
        if ids.dim() != 2 or ids.shape[0] != stream.batch:
            raise ValueError(
                f"extend: ids must be [batch = {stream.batch}, T], got {tuple(ids.shape)}"
            )
        if ids.shape[1] == 0:  # nothing to feed: empty logits, states untouched
            return self.head(self.embedding(ids))  # type: ignore[operator, no-any-return]
        stream.new_call()
        with _activated(stream):
            logits = self(ids)
        stream.length += ids.shape[1]
        return logits

    def step(self, ids: Tensor, stream: Stream) -> Tensor:
        """Logits ``[B, vocab]`` of one more token per sequence, ``ids [B]``."""
        return self.extend(ids.unsqueeze(1), stream)[:, 0]
