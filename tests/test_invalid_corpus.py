"""The invalid-spec corpus: every file in tests/invalid/ fails with its stated error.

Each file's first line is `# expect: LINE:COL: MESSAGE`, optionally followed by
`# hint: HINT` (format: tests/invalid/README.md). The first diagnostic of the
`ArchError` must be at LINE:COL, contain MESSAGE (and HINT), and render with the
file name, the source line and a caret under the culprit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import archdsl
from archdsl.errors import Diagnostic

CORPUS = Path(__file__).resolve().parent / "invalid"
EXPECT = re.compile(r"# expect: (\d+):(\d+): (.+)$")
HINT_PREFIX = "# hint: "
ERROR_CLASSES = (
    "syntax_",
    "unknown_",
    "value_",
    "shape_",
    "cycle_",
    "unused_",
    "duplicate_",
    "causal_",
    "memory_",
    "import_",
)


@dataclass(frozen=True)
class Expectation:
    line: int
    column: int
    message: str
    hint: str | None


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.arch"))


def read_expectation(path: Path) -> Expectation:
    """Parse the header comment of a corpus file (fails loudly on a malformed header)."""
    lines = path.read_text().splitlines()
    match = EXPECT.match(lines[0]) if lines else None
    assert match, f"{path.name}: first line must be `# expect: LINE:COL: MESSAGE`"
    hint = None
    if len(lines) > 1 and lines[1].startswith(HINT_PREFIX):
        hint = lines[1][len(HINT_PREFIX) :]
    return Expectation(int(match[1]), int(match[2]), match[3], hint)


def first_diagnostic(path: Path) -> tuple[archdsl.ArchError, Diagnostic]:
    with pytest.raises(archdsl.ArchError) as info:
        archdsl.load(path)
    err = info.value
    assert err.diagnostics, f"{path.name}: ArchError without diagnostics"
    return err, err.diagnostics[0]


def caret_and_culprit(rendered: str, source_line: str, column: int) -> tuple[int, int]:
    """(display column of the first `^`, display column of the culprit character).

    Display columns are what a terminal shows (tabs expanded to 8): the caret must sit
    under character `column` (1-based) of the source line as rendered above it.
    """
    lines = rendered.splitlines()
    for i, line in enumerate(lines[:-1]):
        if source_line and line.endswith(source_line):
            prefix = line[: len(line) - len(source_line)]
            caret_line = lines[i + 1]
            assert "^" in caret_line, f"no caret under the source line in:\n{rendered}"
            culprit = len((prefix + source_line[: column - 1]).expandtabs())
            return caret_line.expandtabs().index("^"), culprit
    raise AssertionError(f"source line {source_line!r} is not shown in:\n{rendered}")


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_error_position_and_message(path: Path) -> None:
    want = read_expectation(path)
    _, diag = first_diagnostic(path)
    assert diag.loc is not None, f"{path.name}: diagnostic has no location: {diag.message}"
    assert (diag.loc.line, diag.loc.column) == (want.line, want.column), (
        f"{path.name}: error at {diag.loc.line}:{diag.loc.column}, expected "
        f"{want.line}:{want.column} ({diag.message})"
    )
    assert want.message in diag.message, f"{path.name}: message {diag.message!r}"
    assert Path(diag.loc.file).resolve() == path.resolve(), f"{path.name}: names {diag.loc.file}"
    if want.hint is not None:
        assert diag.hint is not None, f"{path.name}: no hint, expected {want.hint!r}"
        assert want.hint in diag.hint, f"{path.name}: hint {diag.hint!r}"


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_rendering_shows_line_and_caret(path: Path) -> None:
    want = read_expectation(path)
    err, diag = first_diagnostic(path)
    rendered = diag.render()
    assert str(err).startswith(rendered)
    assert rendered.splitlines()[0].startswith(f"{path}:{want.line}:{want.column}: ")
    assert "Traceback" not in str(err)
    source_line = path.read_text().splitlines()[want.line - 1]
    caret, culprit = caret_and_culprit(rendered, source_line, want.column)
    assert caret == culprit, f"{path.name}: caret at {caret}, culprit at {culprit}:\n{rendered}"


def test_corpus_is_large_and_covers_every_error_class() -> None:
    files = corpus_files()
    assert len(files) >= 35
    for prefix in ERROR_CLASSES:
        assert any(f.name.startswith(prefix) for f in files), f"no corpus file for {prefix}*"
    for f in files:
        read_expectation(f)


def test_unknown_names_come_with_did_you_mean() -> None:
    """Every `unknown_*` case whose name has a close spelling offers it as a hint."""
    for path in corpus_files():
        if not path.name.startswith("unknown_"):
            continue
        want = read_expectation(path)
        assert want.hint is not None, f"{path.name}: unknown-name cases must state their hint"
