"""Option schemas, and binding a call's arguments to one (with located errors).

A `Schema` says which keyword options a primitive takes, their types, ranges and
defaults, and which bare words may stand positionally as flags (`causal`,
`bidirectional`). `bind` turns a parsed `Call` (or a bare `Name`) into a dict of
checked constant values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from archdsl.errors import ArchError, did_you_mean
from archdsl.frontend.evaluate import Value, evaluate, names_in
from archdsl.ir.base import IRNode, Loc
from archdsl.ir.expr import Call, Expr, Name, Num
from archdsl.ir.memory import Gate

REQUIRED: Any = object()
OptKind = Literal["int", "float", "bool", "choice", "gate", "str"]


@dataclass(frozen=True)
class Opt:
    kind: OptKind
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None
    role: str = ""  # gates: lr | beta | alpha | delta (picks the default activation)
    nullable: bool = False


@dataclass(frozen=True)
class Schema:
    name: str
    options: Mapping[str, Opt] = field(default_factory=dict)
    flags: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    doc: str = ""


GATE_DEFAULT_ACT = {"lr": "sigmoid", "beta": "sigmoid", "alpha": "logsigmoid", "delta": "softplus"}
GATE_DEFAULT_INIT = {"lr": 0.1, "beta": 0.9, "alpha": 0.95, "delta": 1.0}
GATE_SCHEMA = {
    "data": Schema(
        "data",
        {
            "per": Opt("choice", "head", ("head", "channel")),
            "rank": Opt("int", 0, min=0),
            "act": Opt(
                "choice",
                None,
                ("sigmoid", "softplus", "logsigmoid", "mamba", "identity"),
                nullable=True,
            ),
        },
    ),
    "learned": Schema(
        "learned",
        {
            "per": Opt("choice", "head", ("head", "channel")),
            "init": Opt("float", None, nullable=True),
            # the parameter is the pre-activation; `init` is the gate's value after it
            "act": Opt("choice", None, ("sigmoid", "softplus", "logsigmoid"), nullable=True),
        },
    ),
}


def bind(
    schema: Schema, call: Call | Name, env: Mapping[str, Value], what: str
) -> tuple[dict[str, Any], Loc | None]:
    """Check `call` against `schema`; return {option: value} with defaults filled in."""
    args: tuple[Expr, ...] = call.args if isinstance(call, Call) else ()
    kwargs = call.kwargs if isinstance(call, Call) else ()
    values: dict[str, Any] = {}
    positional = list(schema.positional)
    for arg in args:
        if isinstance(arg, Name) and arg.name in schema.flags:
            option, flag_value = schema.flags[arg.name]
            _set_once(values, option, flag_value, arg, what)
            continue
        if not positional:
            raise ArchError(
                f"unexpected positional argument to `{schema.name}` in {what}",
                arg.loc,
                _flag_hint(schema, arg),
            )
        option = positional.pop(0)
        _set_once(
            values, option, convert(schema.options[option], arg, env, what, option), arg, what
        )
    for kw in kwargs:
        if kw.name not in schema.options:
            raise ArchError(
                f"`{schema.name}` has no option `{kw.name}`",
                kw.loc,
                did_you_mean(kw.name, list(schema.options)),
            )
        value = convert(schema.options[kw.name], kw.value, env, what, kw.name)
        _set_once(values, kw.name, value, kw, what)
    for name, opt in schema.options.items():
        if name in values:
            continue
        if opt.default is REQUIRED:
            raise ArchError(
                f"`{schema.name}` needs the option `{name}` in {what}",
                call.loc,
                f"write `{schema.name}({name} = ...)`",
            )
        values[name] = _default(opt, env, what, name)
    return values, call.loc


def _default(opt: Opt, env: Mapping[str, Value], what: str, option: str) -> Any:
    if opt.kind != "gate" or opt.default is None:
        return opt.default
    if isinstance(opt.default, str):
        return convert_gate(opt, Name(name=opt.default), env, what, option)
    return convert_gate(opt, Num(value=opt.default), env, what, option)


def _flag_hint(schema: Schema, arg: Expr) -> str | None:
    if isinstance(arg, Name) and schema.flags:
        return did_you_mean(arg.name, list(schema.flags))
    if schema.options:
        return "pass options by name, e.g. `" + next(iter(schema.options)) + " = ...`"
    return f"`{schema.name}` takes no arguments"


def _set_once(values: dict[str, Any], option: str, value: Any, node: IRNode, what: str) -> None:
    if option in values:
        raise ArchError(f"option `{option}` given twice in {what}", node.loc)
    values[option] = value


def convert(opt: Opt, expr: Expr, env: Mapping[str, Value], what: str, option: str) -> Any:
    """The checked value of one option."""
    if opt.kind == "gate":
        return convert_gate(opt, expr, env, what, option)
    if opt.kind == "choice":
        if isinstance(expr, Name) and expr.name not in env:
            if expr.name in opt.choices:
                return expr.name
            raise ArchError(
                f"bad value `{expr.name}` for `{option}` in {what}",
                expr.loc,
                did_you_mean(expr.name, list(opt.choices)),
            )
        value = evaluate(expr, env, what)
        if value not in opt.choices:
            raise ArchError(
                f"bad value {value!r} for `{option}` in {what}",
                expr.loc,
                did_you_mean(str(value), list(opt.choices)),
            )
        return value
    if opt.nullable and isinstance(expr, Name) and expr.name == "none":
        return None
    value = evaluate(expr, env, what)
    return _check_scalar(opt, value, expr, what, option)


def _check_scalar(opt: Opt, value: Value, expr: Expr, what: str, option: str) -> Any:
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise ArchError(f"`{option}` must be true or false, got {value!r}", expr.loc)
        return value
    if opt.kind == "str":
        if not isinstance(value, str):
            raise ArchError(f"`{option}` must be a string, got {value!r}", expr.loc)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArchError(f"`{option}` in {what} must be a number, got {value!r}", expr.loc)
    if opt.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ArchError(
                f"`{option}` in {what} must be a whole number, got {value:g}",
                expr.loc,
                "check that the dimensions divide evenly",
            )
        value = int(value)
    else:
        value = float(value)
    _check_range(opt, value, expr, what, option)
    return value


def _check_range(opt: Opt, value: float, expr: Expr, what: str, option: str) -> None:
    if opt.min is not None:
        too_small = value <= opt.min if opt.min_exclusive else value < opt.min
        if too_small:
            bound = f"greater than {opt.min:g}" if opt.min_exclusive else f"at least {opt.min:g}"
            raise ArchError(f"`{option}` in {what} must be {bound}, got {value:g}", expr.loc)
    if opt.max is not None and value > opt.max:
        raise ArchError(
            f"`{option}` in {what} must be at most {opt.max:g}, got {value:g}", expr.loc
        )


def convert_gate(
    opt: Opt, expr: Expr, env: Mapping[str, Value], what: str, option: str
) -> Gate | None:
    """A gate: a number, a formula over `head`/`heads`, `learned(...)` or `data(...)`."""
    if isinstance(expr, Name) and expr.name == "none" and opt.nullable:
        return None
    role = opt.role
    if isinstance(expr, Name) and expr.name in GATE_SCHEMA:
        expr = Call(func=expr.name, loc=expr.loc)
    if isinstance(expr, Name) and expr.name not in env and expr.name not in ("head", "heads"):
        raise ArchError(
            f"unknown gate `{expr.name}` for `{option}` in {what}",
            expr.loc,
            did_you_mean(expr.name, [*GATE_SCHEMA, *env])
            or "a gate is a number, a formula over `head`, `learned(...)` or `data(...)`",
        )
    if isinstance(expr, Call) and expr.func in GATE_SCHEMA:
        values, _ = bind(GATE_SCHEMA[expr.func], expr, env, f"gate `{option}`")
        if expr.func == "data":
            act: Any = values["act"] or GATE_DEFAULT_ACT.get(role, "sigmoid")
            return Gate(mode="data", per=values["per"], rank=values["rank"], act=act, loc=expr.loc)
        init = values["init"] if values["init"] is not None else GATE_DEFAULT_INIT.get(role, 0.5)
        return Gate(mode="learned", per=values["per"], value=init, act=values["act"], loc=expr.loc)
    if isinstance(expr, Call):
        raise ArchError(
            f"bad gate `{expr.func}(...)` for `{option}` in {what}",
            expr.loc,
            "a gate is a number, a formula over `head`, `learned(...)` or `data(...)`",
        )
    if names_in(expr) & {"head", "heads"}:
        formula_env = dict(env)
        formula_env.update(head=0, heads=1)
        _gate_value(evaluate(expr, formula_env, f"gate `{option}`"), expr, role, option)
        return Gate(mode="const", formula=_fold_params(expr, env), loc=expr.loc)
    value = _gate_value(evaluate(expr, env, f"gate `{option}`"), expr, role, option)
    return Gate(mode="const", value=value, loc=expr.loc)


def _gate_value(value: Value, expr: Expr, role: str, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArchError(f"gate `{option}` must be a number, got {value!r}", expr.loc)
    value = float(value)
    if role == "alpha" and not 0.0 < value <= 1.0:
        raise ArchError(
            f"retention `{option}` is the fraction kept and must be in (0, 1], got {value:g}",
            expr.loc,
            "alpha = 1 keeps everything; Titans' forgetting rate a is alpha = 1 - a",
        )
    if role in ("lr", "delta") and value <= 0:
        raise ArchError(f"`{option}` must be positive, got {value:g}", expr.loc)
    if role == "beta" and not 0.0 <= value < 1.0 + 1e-12:
        raise ArchError(f"momentum `{option}` must be in [0, 1], got {value:g}", expr.loc)
    return value


def _fold_params(expr: Expr, env: Mapping[str, Value]) -> Expr:
    """Replace parameters (not `head`/`heads`) by their values inside a gate formula."""
    from archdsl.ir.expr import BinOp, Neg

    if isinstance(expr, Name) and expr.name not in ("head", "heads"):
        value = evaluate(expr, env, "gate formula")
        return Num(value=value, loc=expr.loc) if not isinstance(value, str) else expr
    if isinstance(expr, Neg):
        return Neg(operand=_fold_params(expr.operand, env), loc=expr.loc)
    if isinstance(expr, BinOp):
        return BinOp(
            op=expr.op,
            lhs=_fold_params(expr.lhs, env),
            rhs=_fold_params(expr.rhs, env),
            loc=expr.loc,
        )
    return expr
