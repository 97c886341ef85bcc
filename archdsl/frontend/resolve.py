"""AST -> IR: parameters, declarations and defaults resolved; dataflow names bound.

Resolution evaluates the `arch` header (with build-time overrides), `let`s, and every
option against the closed vocabulary (`archdsl.vocab`), and gathers declarations from
imported files. What it cannot resolve is a located `ArchError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archdsl import vocab
from archdsl.errors import ArchError, did_you_mean
from archdsl.frontend import ast
from archdsl.frontend.evaluate import Value, evaluate
from archdsl.frontend.load import SourceSet
from archdsl.frontend.resolve_mixers import resolve_mixer
from archdsl.frontend.schema import bind
from archdsl.frontend.scope import Scope, check_names, gather
from archdsl.ir.expr import BinOp, Call, Expr, Kwarg, Name, Neg, Num, Str
from archdsl.ir.spec import (
    Arch,
    Assign,
    Block,
    BlockRef,
    Head,
    Model,
    Param,
    Repeat,
    Return,
    Stage,
)


def resolve(sources: SourceSet, overrides: Mapping[str, Value] | None = None) -> Arch:
    """The IR of the root spec of `sources`, with parameter `overrides` applied."""
    root = sources.root
    _reject_extras(root)
    env, params = _parameters(root, overrides or {})
    scope = gather(sources)
    check_names(scope)
    env = _lets(scope, env)
    mixers = tuple(
        resolve_mixer(d, env)
        for d in scope.decls.values()
        if isinstance(d, ast.MemoryDecl | ast.MixerDecl)
    )
    mixer_names = {m.name for m in mixers}
    block_decls = {n: d for n, d in scope.decls.items() if isinstance(d, ast.BlockDecl)}
    blocks = tuple(_block(d, env, mixer_names, block_decls) for d in block_decls.values())
    model = _model(root.model, env, block_decls) if root.model else None
    name = root.header.name if root.header else "spec"
    lets = tuple(
        Param(name=d.name, value=env[d.name], loc=d.loc)
        for d in scope.decls.values()
        if isinstance(d, ast.Let)
    )
    return Arch(
        name=name,
        params=params + lets,
        mixers=mixers,
        blocks=blocks,
        model=model,
        loc=root.header.loc if root.header else None,
    )


def _reject_extras(root: ast.SpecFile) -> None:
    if root.extra_headers:
        raise ArchError(
            "a spec has one `arch` header", root.extra_headers[0].loc, "remove the second header"
        )
    if root.extra_models:
        raise ArchError(
            "a spec has one `model`", root.extra_models[0].loc, "remove the second model"
        )


# ---------------------------------------------------------------- parameters


def _parameters(
    root: ast.SpecFile, overrides: Mapping[str, Value]
) -> tuple[dict[str, Value], tuple[Param, ...]]:
    env: dict[str, Value] = {}
    params: list[Param] = []
    declared = [p.name for p in root.header.params] if root.header else []
    for key in overrides:
        if key not in declared:
            raise ArchError(
                f"no parameter `{key}` to override",
                root.header.loc if root.header else None,
                did_you_mean(key, declared) or f"parameters: {', '.join(declared)}",
            )
    for p in root.header.params if root.header else ():
        if p.name in env:
            raise ArchError(f"parameter `{p.name}` declared twice", p.loc)
        value = (
            overrides[p.name]
            if p.name in overrides
            else evaluate(p.value, env, f"parameter `{p.name}`")
        )
        env[p.name] = value
        params.append(Param(name=p.name, value=value, loc=p.loc))
    _check_dims(env, root)
    return env, tuple(params)


def _check_dims(env: Mapping[str, Value], root: ast.SpecFile) -> None:
    loc = {p.name: p.loc for p in root.header.params} if root.header else {}
    for name in vocab.CONVENTIONAL_PARAMS:
        if name not in env:
            continue
        value = env[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArchError(
                f"`{name}` must be a positive whole number, got {value!r}", loc.get(name)
            )
    d_model, heads = env.get("d_model"), env.get("heads")
    if isinstance(d_model, int) and isinstance(heads, int) and d_model % heads:
        raise ArchError(
            f"heads = {heads} does not divide d_model = {d_model}",
            loc.get("heads"),
            f"choose heads among the divisors of {d_model}, e.g. {_divisor_near(d_model, heads)}",
        )


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


def _lets(scope: Scope, env: dict[str, Value]) -> dict[str, Value]:
    env = dict(env)
    for decl in scope.decls.values():
        if isinstance(decl, ast.Let):
            if decl.name in env:
                raise ArchError(
                    f"`{decl.name}` is already a parameter", decl.loc, "choose another name"
                )
            env[decl.name] = evaluate(decl.value, env, f"`let {decl.name}`")
    return env


# ---------------------------------------------------------------- blocks


def _block(
    decl: ast.BlockDecl,
    env: Mapping[str, Value],
    mixers: set[str],
    blocks: Mapping[str, ast.BlockDecl],
) -> Block:
    if not decl.params:
        raise ArchError(
            f"block `{decl.name}` needs at least one input",
            decl.loc,
            f"write `block {decl.name}(x) {{ ... }}`",
        )
    if len(set(decl.params)) != len(decl.params):
        raise ArchError(f"block `{decl.name}` names an input twice", decl.loc)
    for p in decl.params:
        if p in env:
            raise ArchError(
                f"block input `{p}` hides the parameter `{p}`", decl.loc, "rename the input"
            )
    bound = set(decl.params)
    body: list[Assign | Return] = []
    for i, stmt in enumerate(decl.body):
        value = _dataflow(stmt.value, env, bound, mixers, blocks, decl.name)
        if isinstance(stmt, ast.Return):
            if i != len(decl.body) - 1:
                raise ArchError(
                    "statement after `return` is never run",
                    decl.body[i + 1].loc,
                    "move the `return` last",
                )
            body.append(Return(value=value, loc=stmt.loc))
            continue
        if stmt.target in env:
            raise ArchError(
                f"`{stmt.target}` is a parameter and cannot be assigned",
                stmt.loc,
                "use another name",
            )
        if stmt.target in mixers or stmt.target in blocks or stmt.target in vocab.BLOCK_OPS:
            raise ArchError(
                f"`{stmt.target}` names a mixer, block or op and cannot be assigned", stmt.loc
            )
        bound.add(stmt.target)
        body.append(Assign(target=stmt.target, value=value, loc=stmt.loc))
    if not body or not isinstance(body[-1], Return):
        raise ArchError(
            f"block `{decl.name}` has no `return`", decl.loc, "end the block with `return <value>`"
        )
    segment = 0
    if decl.segment is not None:
        length = evaluate(decl.segment, env, f"the segment of block `{decl.name}`")
        if (
            isinstance(length, bool)
            or not isinstance(length, int | float)
            or length != int(length)
            or length < 1
        ):
            raise ArchError(
                f"segment length must be a whole number >= 1, got {length!r}", decl.segment.loc
            )
        segment = int(length)
    return Block(
        name=decl.name, params=decl.params, body=tuple(body), segment=segment, loc=decl.loc
    )


def _dataflow(
    expr: Expr,
    env: Mapping[str, Value],
    bound: set[str],
    mixers: set[str],
    blocks: Mapping[str, ast.BlockDecl],
    block: str,
) -> Expr:
    def walk(e: Expr) -> Expr:
        if isinstance(e, Name):
            if e.name in bound:
                return e
            if e.name in env:
                value = env[e.name]
                return (
                    Str(value=value, loc=e.loc)
                    if isinstance(value, str)
                    else Num(value=value, loc=e.loc)
                )
            raise ArchError(
                f"`{e.name}` is not defined in block `{block}`",
                e.loc,
                did_you_mean(e.name, list(bound | set(env))) or "assign it before use",
            )
        if isinstance(e, Num | Str):
            return e
        if isinstance(e, Neg):
            return Neg(operand=walk(e.operand), loc=e.loc)
        if isinstance(e, BinOp):
            return BinOp(op=e.op, lhs=walk(e.lhs), rhs=walk(e.rhs), loc=e.loc)
        assert isinstance(e, Call)
        return _call(e, walk, env, mixers, blocks, block)

    return walk(expr)


def _call(
    e: Call,
    walk: Any,
    env: Mapping[str, Value],
    mixers: set[str],
    blocks: Mapping[str, ast.BlockDecl],
    block: str,
) -> Call:
    if e.func == vocab.RECALL:
        return _recall(e, walk, mixers)
    if e.func in mixers or e.func in blocks:
        arity = (1, 2) if e.func in mixers else (len(blocks[e.func].params),)
        kind = "mixer" if e.func in mixers else "block"
        if e.kwargs:
            raise ArchError(
                f"{kind} `{e.func}` takes no options at the call",
                e.kwargs[0].loc,
                "options go in its declaration",
            )
        if len(e.args) not in arity:
            hint = (
                "a mixer takes its input, and attention optionally context tokens: `attn(x, h)`"
                if kind == "mixer"
                else None
            )
            raise ArchError(
                f"{kind} `{e.func}` takes {' or '.join(map(str, arity))} input(s), "
                f"got {len(e.args)}",
                e.loc,
                hint,
            )
        return Call(func=e.func, args=tuple(walk(a) for a in e.args), loc=e.loc)
    if e.func not in vocab.BLOCK_OPS:
        choices = list(vocab.BLOCK_OPS) + list(mixers) + list(blocks)
        raise ArchError(
            f"unknown function `{e.func}` in block `{block}`", e.loc, did_you_mean(e.func, choices)
        )
    op = vocab.BLOCK_OPS[e.func]
    if len(e.args) != op.arity:
        raise ArchError(
            f"`{e.func}` takes {op.arity} input(s), got {len(e.args)}",
            e.loc,
            "options are given by name, e.g. `"
            + e.func
            + "(x, "
            + (next(iter(op.schema.options), ""))
            + " = ...)`"
            if op.schema.options
            else None,
        )
    opts, _ = bind(op.schema, Call(func=e.func, kwargs=e.kwargs, loc=e.loc), env, f"`{e.func}`")
    kwargs = tuple(Kwarg(name=k, value=_const(v)) for k, v in opts.items() if v is not None)
    return Call(func=e.func, args=tuple(walk(a) for a in e.args), kwargs=kwargs, loc=e.loc)


def _recall(e: Call, walk: Any, mixers: set[str]) -> Call:
    """`recall(memory, x)`: read `memory` as it was before this segment (no write)."""
    if len(e.args) != 2 or e.kwargs or not isinstance(e.args[0], Name):
        raise ArchError("`recall` takes a memory and an input: `recall(memory, x)`", e.loc)
    target = e.args[0]
    if target.name not in mixers:
        raise ArchError(
            f"`recall` needs a memory, and `{target.name}` is not one",
            target.loc,
            did_you_mean(target.name, list(mixers)),
        )
    return Call(
        func=e.func, args=(Name(name=target.name, loc=target.loc), walk(e.args[1])), loc=e.loc
    )


def _const(value: Value) -> Expr:
    if isinstance(value, str):
        return Name(name=value)
    return Num(value=value)


# ---------------------------------------------------------------- model


def _model(
    decl: ast.ModelDecl, env: Mapping[str, Value], blocks: Mapping[str, ast.BlockDecl]
) -> Model:
    head_call = decl.head
    if head_call.func not in vocab.HEADS:
        raise ArchError(
            f"unknown model head `{head_call.func}`",
            head_call.loc,
            did_you_mean(head_call.func, list(vocab.HEADS)),
        )
    opts, _ = bind(vocab.HEADS[head_call.func], head_call, env, f"model head `{head_call.func}`")
    head = Head(kind=head_call.func, loc=head_call.loc, **opts)  # type: ignore[arg-type]
    if not decl.stages:
        raise ArchError("the model has no blocks", decl.loc, "e.g. `{ repeat(layers) my_block }`")
    return Model(head=head, stages=tuple(_stage(s, env, blocks) for s in decl.stages), loc=decl.loc)


def _stage(
    stage: ast.Stage, env: Mapping[str, Value], blocks: Mapping[str, ast.BlockDecl]
) -> Stage:
    if isinstance(stage, ast.StageBlock):
        if stage.name not in blocks:
            raise ArchError(
                f"unknown block `{stage.name}` in the model",
                stage.loc,
                did_you_mean(stage.name, list(blocks)),
            )
        if len(blocks[stage.name].params) != 1:
            raise ArchError(
                f"block `{stage.name}` takes {len(blocks[stage.name].params)} inputs; "
                "a model stage takes one",
                stage.loc,
            )
        return BlockRef(block=stage.name, loc=stage.loc)
    opts, _ = bind(vocab.REPEAT, stage.call, env, "`repeat`")
    if not stage.body:
        raise ArchError("`repeat` needs a body", stage.loc)
    body = tuple(_stage(s, env, blocks) for s in stage.body)
    return Repeat(n=opts["n"], shared=opts["shared"], body=body, loc=stage.loc)
