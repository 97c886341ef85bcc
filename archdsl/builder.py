"""The Python spec-building API: the same IR as the text, built with functions.

    from archdsl import builder as B
    arch = B.arch(
        "transformer", d_model=512, heads=8, layers=8, vocab=32000,
        mixers=[B.attention("attn", causal=True, pos="rope")],
        blocks=[B.block("layer", ["x"],
            B.let("x", B.add("x", B.call("attn", B.call("rmsnorm", "x")))),
            B.ret(B.add("x", B.call("swiglu", B.call("rmsnorm", "x"), expand=8 / 3))))],
        model=B.model(B.causal_lm(vocab=32000), B.repeat(8, "layer")),
    )

Calls to vocabulary ops get their options checked and defaults filled exactly as the
text front end does, so `arch` equals the IR of the equivalent spec text.
"""

from __future__ import annotations

from typing import Any

from archdsl import vocab
from archdsl.errors import ArchError
from archdsl.frontend.schema import bind
from archdsl.ir.expr import BinOp, Call, Expr, Kwarg, Name, Neg, Num, Str
from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import (
    Arch,
    Assign,
    Block,
    BlockRef,
    Head,
    Mixer,
    Model,
    Param,
    Repeat,
    Return,
    Stage,
)

ExprLike = Expr | str | int | float | bool


def _expr(x: ExprLike) -> Expr:
    if isinstance(x, str):
        return Name(name=x)
    if isinstance(x, bool | int | float):
        return Num(value=x)
    return x


def call(func: str, *args: ExprLike, **options: Any) -> Call:
    """A call in a block: a vocabulary op (options checked, defaults filled) or a mixer/block."""
    if func not in vocab.BLOCK_OPS:
        if options:
            raise ArchError(f"`{func}` takes no options at the call")
        return Call(func=func, args=tuple(_expr(a) for a in args))
    kwargs = tuple(Kwarg(name=k, value=_option_expr(v)) for k, v in options.items())
    values, _ = bind(vocab.BLOCK_OPS[func].schema, Call(func=func, kwargs=kwargs), {}, f"`{func}`")
    filled = tuple(Kwarg(name=k, value=_option_expr(v)) for k, v in values.items() if v is not None)
    return Call(func=func, args=tuple(_expr(a) for a in args), kwargs=filled)


def _option_expr(v: Any) -> Expr:
    if isinstance(v, str):
        return Name(name=v)
    return Num(value=v)


def add(a: ExprLike, b: ExprLike) -> BinOp:
    return BinOp(op="+", lhs=_expr(a), rhs=_expr(b))


def sub(a: ExprLike, b: ExprLike) -> BinOp:
    return BinOp(op="-", lhs=_expr(a), rhs=_expr(b))


def mul(a: ExprLike, b: ExprLike) -> BinOp:
    return BinOp(op="*", lhs=_expr(a), rhs=_expr(b))


def neg(a: ExprLike) -> Neg:
    return Neg(operand=_expr(a))


def string(value: str) -> Str:
    return Str(value=value)


def let(target: str, value: ExprLike) -> Assign:
    return Assign(target=target, value=_expr(value))


def ret(value: ExprLike) -> Return:
    return Return(value=_expr(value))


def block(name: str, params: list[str], *body: Assign | Return) -> Block:
    return Block(name=name, params=tuple(params), body=tuple(body))


def attention(name: str, **options: Any) -> Attention:
    return Attention(name=name, **options)


def matrix(name: str, cls: str, **options: Any) -> MatrixMixer:
    return MatrixMixer(name=name, cls=cls, **options)  # type: ignore[arg-type]


def conv(name: str, **options: Any) -> Conv:
    return Conv(name=name, **options)


def data(per: str = "head", act: str = "sigmoid", rank: int = 0) -> Gate:
    return Gate(mode="data", per=per, act=act, rank=rank)  # type: ignore[arg-type]


def learned(init: float, per: str = "head") -> Gate:
    return Gate(mode="learned", per=per, value=init)  # type: ignore[arg-type]


def const(value: float) -> Gate:
    return Gate(mode="const", value=value)


def memory(
    name: str,
    structure: Structure,
    bias: Bias,
    learner: Learner,
    retention: Retention | None = None,
    batch: int = 1,
    features: Features | None = None,
) -> Memory:
    return Memory(
        name=name,
        structure=structure,
        bias=bias,
        retention=retention or Retention(kind="none"),
        learner=learner,
        batch=batch,
        features=features or Features(),
    )


structure, bias, retention, learner, features = Structure, Bias, Retention, Learner, Features


def causal_lm(vocab: int, tied: bool = False, norm: str = "rms") -> Head:
    return Head(kind="causal_lm", vocab=vocab, tied=tied, norm=norm)  # type: ignore[arg-type]


def masked_lm(vocab: int, tied: bool = False, norm: str = "rms") -> Head:
    return Head(kind="masked_lm", vocab=vocab, tied=tied, norm=norm)  # type: ignore[arg-type]


def classifier(vocab: int, classes: int, pool: str = "mean", norm: str = "rms") -> Head:
    return Head(kind="classifier", vocab=vocab, classes=classes, pool=pool, norm=norm)  # type: ignore[arg-type]


def repeat(n: int, *body: str | Stage, shared: bool = False) -> Repeat:
    return Repeat(
        n=n, shared=shared, body=tuple(BlockRef(block=b) if isinstance(b, str) else b for b in body)
    )


def model(head: Head, *stages: str | Stage) -> Model:
    return Model(
        head=head, stages=tuple(BlockRef(block=s) if isinstance(s, str) else s for s in stages)
    )


def arch(
    name: str,
    *,
    mixers: list[Mixer] | None = None,
    blocks: list[Block] | None = None,
    model: Model | None = None,
    **params: bool | int | float | str,
) -> Arch:
    """An architecture; keyword parameters in the order given (d_model, heads, ...)."""
    return Arch(
        name=name,
        params=tuple(Param(name=k, value=v) for k, v in params.items()),
        mixers=tuple(mixers or ()),
        blocks=tuple(blocks or ()),
        model=model,
    )
