"""Expressions: arithmetic on parameters, and the dataflow inside blocks.

`Num`, `Name`, `Str`, `BinOp`, `Neg` and `Call` cover both the arithmetic of the
architecture header (`d_model / heads`) and the dataflow of blocks
(`x + linear(swa(h) * sigmoid(memory(h)))`).
"""

from __future__ import annotations

from typing import Literal

from archdsl.ir.base import IRNode

BinOpKind = Literal["+", "-", "*", "/", "//", "%", "**"]


class Num(IRNode):
    value: int | float | bool


class Str(IRNode):
    value: str


class Name(IRNode):
    name: str


class Neg(IRNode):
    operand: Expr


class BinOp(IRNode):
    op: BinOpKind
    lhs: Expr
    rhs: Expr


class Kwarg(IRNode):
    name: str
    value: Expr


class Call(IRNode):
    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()

    def kwarg(self, name: str) -> Expr | None:
        for kw in self.kwargs:
            if kw.name == name:
                return kw.value
        return None


Expr = Num | Str | Name | Neg | BinOp | Call

for _model in (Neg, BinOp, Kwarg, Call):
    _model.model_rebuild()
