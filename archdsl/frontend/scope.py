"""Which declarations a spec sees: its own, and what its imports bring (transitively)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from archdsl import vocab
from archdsl.errors import ArchError, did_you_mean
from archdsl.frontend import ast
from archdsl.frontend.load import SourceSet


@dataclass
class Scope:
    """Declarations visible to the root spec: name -> (AST node, file it came from)."""

    decls: dict[str, ast.Decl] = field(default_factory=dict)
    local: set[str] = field(default_factory=set)


def _decl_name(d: ast.Decl) -> str:
    return d.name


def gather(sources: SourceSet) -> Scope:
    """Root declarations plus what its imports bring (recursively), duplicates refused.

    Every file reached contributes the union of the names asked of it (by any import
    statement that reaches it, with what they use in the same file), or everything when
    some `import "file"` asks for all of it.
    """
    root = sources.root.file
    wanted: dict[str, set[str] | None] = {root: None}
    order = [root]
    todo = [root]
    while todo:
        file = todo.pop()
        for imp, sub in sources.edges.get(file, []):
            available = {_decl_name(d): d for d in sources.files[sub].decls}
            _check_imported_names(imp, available)
            before = wanted.get(sub, set())
            after = (
                None
                if before is None or imp.names is None
                else before | _with_dependencies(set(imp.names), available)
            )
            if sub not in wanted:
                order.append(sub)
            if sub not in wanted or after != before:
                wanted[sub] = after
                todo.append(sub)
    scope = Scope()
    for file in order:
        names = wanted[file]
        for decl in sources.files[file].decls:
            if names is None or decl.name in names:
                _add(scope, decl, local=file == root)
    return scope


def _check_imported_names(imp: ast.Import, available: Mapping[str, ast.Decl]) -> None:
    for name in imp.names or ():
        if name not in available:
            raise ArchError(
                f"`{name}` is not defined in '{imp.path}'",
                imp.loc,
                did_you_mean(name, list(available)),
            )


def _add(scope: Scope, decl: ast.Decl, local: bool) -> None:
    name = _decl_name(decl)
    if name in scope.decls:
        if scope.decls[name] is decl:
            return
        first = scope.decls[name].loc
        raise ArchError(
            f"`{name}` is defined twice (first at {first})", decl.loc, "rename one of them"
        )
    scope.decls[name] = decl
    if local:
        scope.local.add(name)


def _with_dependencies(names: set[str], available: Mapping[str, ast.Decl]) -> set[str]:
    """`names` plus every declaration of the same file they use (blocks call mixers)."""
    from archdsl.graph.build import calls_in

    todo, done = list(names), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        decl = available.get(name)
        if isinstance(decl, ast.BlockDecl):
            for stmt in decl.body:
                todo += [c.func for c in calls_in(stmt.value) if c.func in available]
    return done


def check_names(scope: Scope) -> None:
    for name, decl in scope.decls.items():
        if name in vocab.RESERVED_NAMES or name in ("head", "heads"):
            raise ArchError(
                f"`{name}` is a built-in name and cannot be redefined",
                decl.loc,
                f"rename it, e.g. `my_{name}`",
            )
