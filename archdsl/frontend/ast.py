"""The typed AST of one spec file, as parsed: every node keeps its source location.

Expressions are the IR's expression nodes (`archdsl.ir.expr`), which already carry
locations; declarations are plain frozen dataclasses. Resolution turns a `SpecFile`
(and the files it imports) into the IR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archdsl.ir.base import Loc
from archdsl.ir.expr import Call, Expr


@dataclass(frozen=True)
class Param:
    name: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class ArchHeader:
    name: str
    params: tuple[Param, ...]
    loc: Loc


@dataclass(frozen=True)
class Import:
    path: str
    names: tuple[str, ...] | None  # None: import everything
    loc: Loc


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class Entry:
    key: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class MemoryDecl:
    name: str
    entries: tuple[Entry, ...]
    loc: Loc


@dataclass(frozen=True)
class MixerDecl:
    name: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class Return:
    value: Expr
    loc: Loc


Statement = Assign | Return


@dataclass(frozen=True)
class BlockDecl:
    name: str
    params: tuple[str, ...]
    body: tuple[Statement, ...]
    loc: Loc
    segment: Expr | None = None  # `segment(n)`: run the block segment by segment


@dataclass(frozen=True)
class StageBlock:
    name: str
    loc: Loc


@dataclass(frozen=True)
class StageRepeat:
    call: Call  # repeat(n, shared = ...): the arguments, as a call node
    body: tuple[Stage, ...]
    loc: Loc


Stage = StageBlock | StageRepeat


@dataclass(frozen=True)
class ModelDecl:
    head: Call
    stages: tuple[Stage, ...]
    loc: Loc


Decl = Let | MemoryDecl | MixerDecl | BlockDecl


@dataclass(frozen=True)
class SpecFile:
    """One parsed file, its items in source order."""

    file: str
    header: ArchHeader | None = None
    imports: tuple[Import, ...] = ()
    decls: tuple[Decl, ...] = ()
    model: ModelDecl | None = None
    extra_headers: tuple[ArchHeader, ...] = field(default=())
    extra_models: tuple[ModelDecl, ...] = field(default=())
