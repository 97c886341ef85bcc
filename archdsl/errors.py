"""One error type for everything a user can get wrong in a spec.

A `Diagnostic` names the place (`file:line:col`), shows the source line with a caret,
says what is wrong and, where it can, what would be right. `ArchError` carries one or
more diagnostics; the CLI prints them and exits 1, never with a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archdsl.ir.base import Loc


@dataclass(frozen=True)
class Diagnostic:
    message: str
    loc: Loc | None = None
    hint: str | None = None
    source_line: str | None = None

    def render(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [head]
        if self.source_line is not None and self.loc is not None and self.loc.line > 0:
            # the caret is placed where a terminal shows the column (tab stops every 8)
            shown = "    " + self.source_line
            start = len(("    " + self.source_line[: max(self.loc.column - 1, 0)]).expandtabs())
            end = start + 1
            if self.loc.end_line == self.loc.line and self.loc.end_column > self.loc.column:
                end = len(("    " + self.source_line[: self.loc.end_column - 1]).expandtabs())
            lines.append(shown)
            lines.append(" " * start + "^" * max(end - start, 1))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


@dataclass
class ArchError(Exception):
    """A spec error (or several). ``str(err)`` is the rendered, user-facing text."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __init__(
        self,
        message: str | None = None,
        loc: Loc | None = None,
        hint: str | None = None,
        *,
        diagnostics: list[Diagnostic] | None = None,
    ) -> None:
        diags = list(diagnostics or [])
        if message is not None:
            diags.insert(0, Diagnostic(message, loc, hint))
        self.diagnostics = diags
        super().__init__(self.render())

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()

    def with_sources(self, sources: dict[str, str]) -> ArchError:
        """Attach source lines to diagnostics whose file is in `sources`."""
        diags = [_with_source(d, sources) for d in self.diagnostics]
        return ArchError(diagnostics=diags)


def _with_source(diag: Diagnostic, sources: dict[str, str]) -> Diagnostic:
    if diag.source_line is not None or diag.loc is None or diag.loc.file not in sources:
        return diag
    lines = sources[diag.loc.file].splitlines()
    if not 1 <= diag.loc.line <= len(lines):
        return diag
    return Diagnostic(diag.message, diag.loc, diag.hint, lines[diag.loc.line - 1])


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """A 'did you mean X?' hint for the closest choice, if one is close enough."""
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if len(choices) <= 12:
        return "expected one of: " + ", ".join(f"`{c}`" for c in sorted(choices))
    return None
