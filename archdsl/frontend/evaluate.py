"""Constant folding of parameter arithmetic (`d_model / heads`), with located errors.

Pure Python: no eval(). Division of two integers that divide exactly stays an integer,
so dimensions computed as `d_model / heads` remain integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from archdsl.errors import ArchError, did_you_mean
from archdsl.ir.expr import BinOp, Call, Expr, Name, Neg, Num, Str

Value = bool | int | float | str


def evaluate(expr: Expr, env: Mapping[str, Value], what: str = "value") -> Value:
    """The value of a constant expression; names are looked up in `env`."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Str):
        return expr.value
    if isinstance(expr, Name):
        if expr.name in env:
            return env[expr.name]
        raise ArchError(
            f"unknown name `{expr.name}` in {what}",
            expr.loc,
            did_you_mean(expr.name, list(env))
            or "parameters are declared in the `arch` header or by `let`",
        )
    if isinstance(expr, Neg):
        operand = _number(evaluate(expr.operand, env, what), expr.operand)
        return -operand
    if isinstance(expr, BinOp):
        lhs = _number(evaluate(expr.lhs, env, what), expr.lhs)
        rhs = _number(evaluate(expr.rhs, env, what), expr.rhs)
        return _binop(expr, lhs, rhs)
    if isinstance(expr, Call):
        raise ArchError(
            f"a call to `{expr.func}` cannot be used as a constant {what}",
            expr.loc,
            "use a number, a parameter, or arithmetic on parameters",
        )
    raise AssertionError(f"unhandled expression {type(expr).__name__}")  # pragma: no cover


def _number(value: Value, expr: Expr) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArchError(f"expected a number, got {value!r}", expr.loc)
    return value


def _binop(expr: BinOp, lhs: int | float, rhs: int | float) -> int | float:
    op = expr.op
    if op in ("/", "//", "%") and rhs == 0:
        raise ArchError("division by zero", expr.loc)
    if op == "**" and _power_too_large(lhs, rhs):
        raise ArchError("number too large", expr.loc, "exponents that big give no usable size")
    try:
        if op == "+":
            return lhs + rhs
        if op == "-":
            return lhs - rhs
        if op == "*":
            return lhs * rhs
        if op == "/":
            if isinstance(lhs, int) and isinstance(rhs, int) and lhs % rhs == 0:
                return lhs // rhs
            return lhs / rhs
        if op == "//":
            return lhs // rhs
        if op == "%":
            return lhs % rhs
        result = lhs**rhs
    except OverflowError:
        raise ArchError("number too large", expr.loc) from None
    except ZeroDivisionError:
        raise ArchError("division by zero", expr.loc) from None
    if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
        raise ArchError("arithmetic gives no finite real number", expr.loc)
    if isinstance(result, int) and abs(result) > 2**62:
        raise ArchError("number too large", expr.loc)
    return result


def _power_too_large(base: int | float, exponent: int | float) -> bool:
    """Would base ** exponent exceed 2^62 (checked before computing it)?"""
    if abs(base) <= 1 or exponent <= 0:
        return False
    return exponent * math.log2(abs(base)) > 62


def names_in(expr: Expr) -> set[str]:
    """Every `Name` an expression mentions (call targets excluded)."""
    if isinstance(expr, Name):
        return {expr.name}
    if isinstance(expr, Neg):
        return names_in(expr.operand)
    if isinstance(expr, BinOp):
        return names_in(expr.lhs) | names_in(expr.rhs)
    if isinstance(expr, Call):
        out: set[str] = set()
        for a in expr.args:
            out |= names_in(a)
        for kw in expr.kwargs:
            out |= names_in(kw.value)
        return out
    return set()
