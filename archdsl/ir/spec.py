"""The top of the IR: an architecture = parameters, declarations, blocks and a model.

All values are resolved: parameters are numbers, option arguments are constants, and
block dataflow refers only to block inputs, local bindings, declared mixers/memories,
other blocks, and the closed vocabulary of ops (`archdsl.vocab`).
"""

from __future__ import annotations

from typing import Literal

from archdsl.ir.base import IRNode
from archdsl.ir.expr import Call, Expr
from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention, Conv, MatrixMixer

Mixer = Memory | MatrixMixer | Attention | Conv
ParamValue = bool | int | float | str


class Param(IRNode):
    name: str
    value: ParamValue


class Assign(IRNode):
    target: str
    value: Expr


class Return(IRNode):
    value: Expr


class Block(IRNode):
    """A block: dataflow from its inputs (first one: the residual stream) to a return.

    ``segment`` > 0: the block runs on consecutive segments of that many tokens, in
    order, its memories carrying their state from one segment to the next; `recall`
    reads a memory as it was before the current segment (Titans MAC).
    """

    name: str
    params: tuple[str, ...]
    body: tuple[Assign | Return, ...]
    segment: int = 0


class Repeat(IRNode):
    """`repeat(n) body`: n copies of the body; with `shared`, one set of weights (UT)."""

    n: int
    shared: bool = False
    body: tuple[Stage, ...]


class BlockRef(IRNode):
    block: str


Stage = BlockRef | Repeat

HeadKind = Literal["causal_lm", "masked_lm", "classifier", "encoder"]


class Head(IRNode):
    """How the model meets tokens and targets.

    causal_lm / masked_lm: embedding of ``vocab`` tokens, final norm, LM head (``tied``
    to the embedding or not); classifier: embedding, final norm, pooling (mean / first /
    last) and a linear layer to ``classes``; encoder: embedding and final norm only.
    """

    kind: HeadKind
    vocab: int
    classes: int = 0
    tied: bool = False
    norm: Literal["rms", "layer", "none"] = "rms"
    pool: Literal["mean", "first", "last"] = "mean"


class Model(IRNode):
    head: Head
    stages: tuple[Stage, ...]


class Arch(IRNode):
    """A whole architecture: the single source of truth for every later stage."""

    name: str
    params: tuple[Param, ...]
    mixers: tuple[Mixer, ...] = ()
    blocks: tuple[Block, ...] = ()
    model: Model | None = None

    def param(self, name: str) -> ParamValue:
        for p in self.params:
            if p.name == name:
                return p.value
        raise KeyError(name)

    def mixer(self, name: str) -> Mixer | None:
        return next((m for m in self.mixers if m.name == name), None)

    def block(self, name: str) -> Block | None:
        return next((b for b in self.blocks if b.name == name), None)

    @property
    def d_model(self) -> int:
        return int(self.param("d_model"))

    @property
    def heads(self) -> int:
        return int(self.param("heads"))


for _model in (Repeat, Model, Arch, Block):
    _model.model_rebuild()

Call.model_rebuild()
