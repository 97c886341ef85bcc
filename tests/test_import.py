"""Imports between spec files: `import "f.arch"` and `from "f.arch" import a, b`.

Fixtures live in tests/fixtures/imports/. The oracle for a working import is the same
model written in one file (`inline.arch`): both must resolve to equal IR. Failures
(cycles, missing files, missing names, errors inside an imported file) must be
`ArchError`s located in the file and on the line that caused them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import archdsl
from archdsl.errors import Diagnostic

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "imports"


def error_of(name: str) -> Diagnostic:
    with pytest.raises(archdsl.ArchError) as info:
        archdsl.load(FIXTURES / name)
    assert info.value.diagnostics
    return info.value.diagnostics[0]


def same_file(a: str, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def test_from_import_equals_the_inline_spec() -> None:
    imported = archdsl.load(FIXTURES / "main_some.arch")
    inline = archdsl.load(FIXTURES / "inline.arch")
    assert {m.name for m in imported.ir.mixers} == {"attn"}
    assert {b.name for b in imported.ir.blocks} == {"ffn", "layer"}
    # the same declarations, whichever file they were written in
    assert sorted(imported.ir.mixers, key=lambda m: m.name) == list(inline.ir.mixers)
    assert sorted(imported.ir.blocks, key=lambda b: b.name) == sorted(
        inline.ir.blocks, key=lambda b: b.name
    )
    assert imported.ir.model == inline.ir.model
    assert imported.ir.params == inline.ir.params


def test_from_import_leaves_other_names_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mem` is declared in lib.arch but not imported by main_some: not in scope."""
    monkeypatch.chdir(FIXTURES)  # `loads` resolves imports against the working directory
    spec = archdsl.load(FIXTURES / "main_some.arch")
    assert spec.ir.mixer("mem") is None
    text = (FIXTURES / "main_some.arch").read_text().replace("ffn(x + attn", "ffn(x + mem")
    with pytest.raises(archdsl.ArchError) as info:
        archdsl.loads(text, str(FIXTURES / "main_some_mem.arch"))
    diag = info.value.diagnostics[0]
    assert "`mem`" in diag.message and diag.loc is not None and diag.loc.line == 7


def test_import_all_brings_every_declaration() -> None:
    spec = archdsl.load(FIXTURES / "main_all.arch")
    assert {m.name for m in spec.ir.mixers} == {"attn", "mem"}
    assert {b.name for b in spec.ir.blocks} == {"ffn", "layer"}
    lib_attn = archdsl.loads(
        (FIXTURES / "inline.arch").read_text(), str(FIXTURES / "x.arch")
    ).ir.mixer("attn")
    assert spec.ir.mixer("attn") == lib_attn


def test_import_paths_are_relative_to_the_importing_file() -> None:
    """diamond.arch takes `attn` from lib.arch and, through sub/middle.arch (which
    imports "../lib.arch"), `mem`: both must be in scope."""
    spec = archdsl.load(FIXTURES / "diamond.arch")
    assert {m.name for m in spec.ir.mixers} == {"attn", "mem"}
    assert {b.name for b in spec.ir.blocks} == {"layer", "memory_layer"}


def test_imports_resolve_independently_of_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert archdsl.load(FIXTURES / "main_some.arch").ir.mixer("attn") is not None


def test_import_cycle_is_a_located_error() -> None:
    diag = error_of("cycle_a.arch")
    assert "import cycle" in diag.message
    assert "cycle_a.arch" in diag.message and "cycle_b.arch" in diag.message
    assert diag.loc is not None
    # the import that closes the cycle: line 3 of cycle_b.arch
    assert same_file(diag.loc.file, FIXTURES / "cycle_b.arch")
    assert (diag.loc.line, diag.loc.column) == (3, 1)
    rendered = diag.render()
    assert 'import "cycle_a.arch"' in rendered, f"source line not shown:\n{rendered}"
    assert "^" in rendered


def test_missing_import_file_is_a_located_error() -> None:
    diag = error_of("missing_file.arch")
    assert "no_such_library.arch" in diag.message and "not found" in diag.message
    assert diag.loc is not None
    assert same_file(diag.loc.file, FIXTURES / "missing_file.arch")
    assert (diag.loc.line, diag.loc.column) == (2, 1)
    rendered = diag.render()
    assert 'import "no_such_library.arch"' in rendered, f"source line not shown:\n{rendered}"
    assert "^" in rendered


def test_missing_imported_name_is_a_located_error() -> None:
    diag = error_of("missing_name.arch")
    assert "`atn`" in diag.message and "lib.arch" in diag.message
    assert diag.hint is not None and "attn" in diag.hint
    assert diag.loc is not None
    assert same_file(diag.loc.file, FIXTURES / "missing_name.arch")
    assert diag.loc.line == 3
    assert 'from "lib.arch" import ffn, atn' in diag.render()


def test_error_inside_an_imported_file_points_into_that_file() -> None:
    diag = error_of("uses_broken.arch")
    assert diag.loc is not None
    assert same_file(diag.loc.file, FIXTURES / "broken_lib.arch")
    assert (diag.loc.line, diag.loc.column) == (3, 12)
    assert "mixer attn attention(causal)" in diag.render()


def test_a_local_declaration_clashing_with_an_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(FIXTURES)  # `loads` resolves imports against the working directory
    main = FIXTURES / "main_some.arch"
    text = main.read_text() + "\nmixer attn = attention(causal, window = 8)\n"
    with pytest.raises(archdsl.ArchError) as info:
        archdsl.loads(text, str(FIXTURES / "clash.arch"))
    diag = info.value.diagnostics[0]
    assert "`attn` is defined twice" in diag.message
