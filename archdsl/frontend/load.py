"""Reading a spec and the files it imports, with import cycles and missing files as errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from archdsl.errors import ArchError
from archdsl.frontend import ast
from archdsl.frontend.parse import parse_text
from archdsl.ir.base import Loc


@dataclass
class SourceSet:
    """Every file of one spec (the root first), parsed, with its text for error display."""

    root: ast.SpecFile
    files: dict[str, ast.SpecFile] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    # import edges: importing file -> [(import node, imported file key)]
    edges: dict[str, list[tuple[ast.Import, str]]] = field(default_factory=dict)


def load_sources(
    path: str | Path | None = None, text: str | None = None, name: str = "<spec>"
) -> SourceSet:
    """Parse the root spec (from `path` or `text`) and, recursively, its imports."""
    if text is None:
        if path is None:
            raise ArchError("nothing to load: give a path or a text")
        path = Path(path)
        text = _read(path, None)
        name = str(path)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    root = parse_text(text, name)
    sources = SourceSet(root=root, files={name: root}, texts={name: text})
    try:
        _load_imports(sources, root, base, stack=[name])
    except ArchError as err:
        raise err.with_sources(sources.texts) from None
    return sources


def _read(path: Path, loc: Loc | None) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ArchError(
            f"spec file '{path}' not found",
            loc,
            "paths in `import` are relative to the importing file",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ArchError(f"cannot read spec file '{path}': {err}", loc) from None


def _load_imports(sources: SourceSet, spec: ast.SpecFile, base: Path, stack: list[str]) -> None:
    edges = sources.edges.setdefault(spec.file, [])
    for imp in spec.imports:
        target = (base / imp.path).resolve()
        key = str(target)
        if key in stack or target == Path(stack[0]).resolve():
            chain = " -> ".join([*(Path(s).name for s in stack), Path(key).name])
            raise ArchError(
                f"import cycle: {chain}", imp.loc, "a spec may not import itself, even indirectly"
            )
        edges.append((imp, key))
        if key in sources.files:
            continue
        text = _read(target, imp.loc)
        imported = parse_text(text, key)
        sources.files[key] = imported
        sources.texts[key] = text
        _load_imports(sources, imported, target.parent, [*stack, key])
