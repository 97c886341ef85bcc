"""Text -> AST: the lark grammar, a transformer to typed nodes, friendly syntax errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, UnexpectedCharacters, UnexpectedInput, v_args
from lark.exceptions import UnexpectedEOF, UnexpectedToken, VisitError

from archdsl.errors import ArchError, Diagnostic
from archdsl.frontend import ast
from archdsl.ir.base import Loc
from archdsl.ir.expr import BinOp, Call, Expr, Kwarg, Name, Neg, Num, Str

GRAMMAR = Path(__file__).resolve().parent.parent / "grammars" / "arch.lark"


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    # cache=True: lark stores the built LALR tables in the temp dir, keyed by the grammar's
    # hash, which keeps `archdsl check` start-up short.
    return Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        cache=True,
    )


def parse_text(text: str, file: str = "<spec>") -> ast.SpecFile:
    """Parse spec text into a `SpecFile`; raise `ArchError` on a syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    _check_depth(tree, text, file)
    try:
        return _ToAst(file).transform(tree)  # type: ignore[no-any-return]
    except VisitError as err:
        if isinstance(err.orig_exc, ArchError):
            raise err.orig_exc.with_sources({file: text}) from None
        raise


MAX_DEPTH = 120


def _check_depth(tree: Tree, text: str, file: str) -> None:
    """Refuse absurdly deep nesting up front (later passes recurse over the tree)."""
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if depth > MAX_DEPTH:
            meta = node.meta
            loc = _loc(file, meta)
            line = (
                text.splitlines()[loc.line - 1] if 1 <= loc.line <= len(text.splitlines()) else None
            )
            diag = Diagnostic(
                f"expression nested more than {MAX_DEPTH} levels deep",
                loc,
                "split it into several statements",
                line,
            )
            raise ArchError(diagnostics=[diag])
        stack.extend((child, depth + 1) for child in node.children)


def parse_file(path: str | Path) -> ast.SpecFile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ArchError(f"cannot read spec file '{path}': {err.strerror}") from None
    return parse_text(text, str(path))


# ---------------------------------------------------------------- syntax errors

_TOKEN_WORDS = {
    "RBRACE": "`}`",
    "LBRACE": "`{`",
    "RPAR": "`)`",
    "LPAR": "`(`",
    "EQUAL": "`=`",
    "COMMA": "`,`",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "RETURN": "`return`",
    "PLUS": "`+`",
    "MINUS": "`-`",
    "STAR": "`*`",
    "SLASH": "`/`",
    "PERCENT": "`%`",
    "$END": "end of file",
}


def _describe(token_type: str) -> str:
    return _TOKEN_WORDS.get(token_type, f"`{token_type.lower()}`")


def _syntax_error(err: UnexpectedInput, text: str, file: str) -> ArchError:
    line, column = getattr(err, "line", 0) or 0, getattr(err, "column", 0) or 0
    hint: str | None
    if isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END"
    ):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        message, hint = "unexpected end of file", _eof_hint(err)
    elif isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        char = text[pos] if pos < len(text) else "?"
        message = f"unexpected character {char!r}"
        hint = "names are letters, digits and `_`; strings use double quotes"
    elif isinstance(err, UnexpectedToken):
        message, hint = _token_message(err)
    else:  # pragma: no cover - lark has no other subclass today
        message, hint = "syntax error", None
    loc = Loc(file=file, line=line, column=column, end_line=line, end_column=column + 1)
    source_line = text.splitlines()[line - 1] if 1 <= line <= len(text.splitlines()) else None
    return ArchError(diagnostics=[Diagnostic(message, loc, hint, source_line)])


def _eof_hint(err: UnexpectedInput) -> str:
    expected = set(getattr(err, "expected", ()) or ())
    if "RBRACE" in expected:
        return "a `{` was never closed: add the missing `}`"
    if "RPAR" in expected:
        return "a `(` was never closed: add the missing `)`"
    return "the spec ends in the middle of a declaration"


def _token_message(err: UnexpectedToken) -> tuple[str, str | None]:
    token = err.token
    shown = str(token).replace("\n", "\\n")
    expected = sorted(err.expected)
    if token.type == "EQUAL" and "RPAR" in expected:
        return "unexpected `=`", "keyword arguments look like `name = value` after a name"
    if token.type in ("NAME", "NUMBER", "STRING") and {"RPAR", "COMMA"} & set(expected):
        return f"unexpected `{shown}`", "missing `,` between arguments (or `=` after a keyword)?"
    if token.type == "NAME" and "EQUAL" in expected:
        return f"unexpected `{shown}`: expected `=`", "declarations look like `name = value`"
    if "RBRACE" in expected and token.type in ("NAME", "RETURN", "MEMORY", "MIXER", "BLOCK"):
        return f"unexpected `{shown}`", "missing `}` to close the previous block?"
    words = ", ".join(_describe(e) for e in expected[:6])
    return f"unexpected `{shown}`", (f"expected {words}" if words else None)


# ---------------------------------------------------------------- tree -> AST


def _loc(file: str, meta: Any) -> Loc:
    if getattr(meta, "empty", True):
        return Loc(file=file)
    return Loc(
        file=file,
        line=meta.line,
        column=meta.column,
        end_line=meta.end_line,
        end_column=meta.end_column,
    )


def _tok_loc(file: str, tok: Token) -> Loc:
    return Loc(
        file=file,
        line=tok.line or 0,
        column=tok.column or 0,
        end_line=tok.end_line or 0,
        end_column=tok.end_column or 0,
    )


@v_args(meta=True)
class _ToAst(Transformer[Any, Any]):
    """Builds AST nodes bottom-up; expressions become `archdsl.ir.expr` nodes."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _l(self, meta: Any) -> Loc:
        return _loc(self.file, meta)

    # expressions
    def number(self, meta: Any, children: list[Token]) -> Num:
        text = str(children[0])
        too_large = ArchError(
            "number too large", self._l(meta), "numbers in specs must be below 2^62 (about 4.6e18)"
        )
        if len(text) > 40:
            raise too_large
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
        if abs(value) > 2**62 or value != value or value in (float("inf"), float("-inf")):
            raise too_large
        return Num(value=value, loc=self._l(meta))

    def true(self, meta: Any, _: list[Any]) -> Num:
        return Num(value=True, loc=self._l(meta))

    def false(self, meta: Any, _: list[Any]) -> Num:
        return Num(value=False, loc=self._l(meta))

    def string(self, meta: Any, children: list[Token]) -> Str:
        return Str(value=str(children[0])[1:-1], loc=self._l(meta))

    def name(self, meta: Any, children: list[Token]) -> Name:
        return Name(name=str(children[0]), loc=self._l(meta))

    def _bin(self, op: str, meta: Any, children: list[Expr]) -> BinOp:
        return BinOp(op=op, lhs=children[0], rhs=children[1], loc=self._l(meta))  # type: ignore[arg-type]

    def add(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("+", meta, c)

    def sub(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("-", meta, c)

    def mul(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("*", meta, c)

    def div(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("/", meta, c)

    def floordiv(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("//", meta, c)

    def mod(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("%", meta, c)

    def pow(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("**", meta, c)

    def neg(self, meta: Any, c: list[Expr]) -> Neg:
        return Neg(operand=c[0], loc=self._l(meta))

    def kwarg(self, meta: Any, c: list[Any]) -> Kwarg:
        return Kwarg(name=str(c[0]), value=c[1], loc=self._l(meta))

    def arglist(self, meta: Any, c: list[Any]) -> list[Any]:
        return c

    def call(self, meta: Any, c: list[Any]) -> Call:
        func, args = str(c[0]), c[1] or []
        positional = tuple(a for a in args if not isinstance(a, Kwarg))
        keywords = tuple(a for a in args if isinstance(a, Kwarg))
        seen_kw = False
        for a in args:
            if isinstance(a, Kwarg):
                seen_kw = True
            elif seen_kw:
                raise ArchError(
                    "positional argument after a keyword argument",
                    a.loc,
                    "put positional arguments first",
                )
        return Call(func=func, args=positional, kwargs=keywords, loc=self._l(meta))

    # declarations
    def param(self, meta: Any, c: list[Any]) -> ast.Param:
        return ast.Param(str(c[0]), c[1], self._l(meta))

    def arch_header(self, meta: Any, c: list[Any]) -> ast.ArchHeader:
        params = tuple(p for p in c[1:] if p is not None)
        return ast.ArchHeader(str(c[0]), params, self._l(meta))

    def import_all(self, meta: Any, c: list[Token]) -> ast.Import:
        return ast.Import(str(c[0])[1:-1], None, self._l(meta))

    def import_some(self, meta: Any, c: list[Token]) -> ast.Import:
        return ast.Import(str(c[0])[1:-1], tuple(str(n) for n in c[1:]), self._l(meta))

    def let_decl(self, meta: Any, c: list[Any]) -> ast.Let:
        return ast.Let(str(c[0]), c[1], self._l(meta))

    def entry(self, meta: Any, c: list[Any]) -> ast.Entry:
        return ast.Entry(str(c[0]), c[1], self._l(meta))

    def memory_decl(self, meta: Any, c: list[Any]) -> ast.MemoryDecl:
        return ast.MemoryDecl(str(c[0]), tuple(c[1:]), self._l(meta))

    def mixer_decl(self, meta: Any, c: list[Any]) -> ast.MixerDecl:
        return ast.MixerDecl(str(c[0]), c[1], self._l(meta))

    def assign(self, meta: Any, c: list[Any]) -> ast.Assign:
        return ast.Assign(str(c[0]), c[1], self._l(meta))

    def return_stmt(self, meta: Any, c: list[Any]) -> ast.Return:
        return ast.Return(c[0], self._l(meta))

    def segment_clause(self, meta: Any, c: list[Any]) -> tuple[str, Expr]:
        return ("segment", c[0])

    def block_decl(self, meta: Any, c: list[Any]) -> ast.BlockDecl:
        params = tuple(str(t) for t in c[1:] if isinstance(t, Token))
        body = tuple(s for s in c[1:] if isinstance(s, ast.Assign | ast.Return))
        segment = next((x[1] for x in c[1:] if isinstance(x, tuple)), None)
        return ast.BlockDecl(str(c[0]), params, body, self._l(meta), segment)

    def stage_block(self, meta: Any, c: list[Token]) -> ast.StageBlock:
        return ast.StageBlock(str(c[0]), self._l(meta))

    def stage_repeat(self, meta: Any, c: list[Any]) -> ast.StageRepeat:
        args = c[0]
        call = self.call(meta, [Token("NAME", "repeat"), args])
        rest = c[1:]
        body: tuple[ast.Stage, ...]
        if len(rest) == 1 and isinstance(rest[0], Token):
            body = (ast.StageBlock(str(rest[0]), _tok_loc(self.file, rest[0])),)
        else:
            body = tuple(rest)
        return ast.StageRepeat(call, body, self._l(meta))

    def model_decl(self, meta: Any, c: list[Any]) -> ast.ModelDecl:
        return ast.ModelDecl(c[0], tuple(c[1:]), self._l(meta))

    def start(self, meta: Any, items: list[Any]) -> ast.SpecFile:
        headers = [i for i in items if isinstance(i, ast.ArchHeader)]
        models = [i for i in items if isinstance(i, ast.ModelDecl)]
        return ast.SpecFile(
            file=self.file,
            header=headers[0] if headers else None,
            imports=tuple(i for i in items if isinstance(i, ast.Import)),
            decls=tuple(
                i
                for i in items
                if isinstance(i, ast.Let | ast.MemoryDecl | ast.MixerDecl | ast.BlockDecl)
            ),
            model=models[0] if models else None,
            extra_headers=tuple(headers[1:]),
            extra_models=tuple(models[1:]),
        )
