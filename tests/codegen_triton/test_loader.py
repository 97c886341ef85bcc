"""Loading generated source: a real module from a real file, cached by source hash."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from archdsl.codegen.triton.emit import emit_triton_module
from archdsl.codegen.triton.loader import cache_dir, load_triton_module, source_hash
from archdsl.codegen.triton.spec import AttentionFlags, KernelSpec


def test_same_source_same_module() -> None:
    first = load_triton_module("VALUE = 41 + 1\n", "loader_demo")
    assert first.VALUE == 42
    assert load_triton_module("VALUE = 41 + 1\n", "loader_demo") is first


def test_different_source_different_module() -> None:
    a = load_triton_module("VALUE = 1\n", "loader_ab")
    b = load_triton_module("VALUE = 2\n", "loader_ab")
    assert a is not b
    assert (a.VALUE, b.VALUE) == (1, 2)


def test_source_lives_in_the_cache_file() -> None:
    source = "def f():\n    return 3\n"
    module = load_triton_module(source, "loader_file")
    path = Path(module.__file__)
    assert path.parent == cache_dir()
    assert source_hash(source)[:16] in path.name
    assert path.read_text() == source
    assert inspect.getsource(module.f) == source  # what @triton.jit relies on


def test_generated_kernels_load_with_their_launchers() -> None:
    spec = KernelSpec("attention", "loader_attn", "test", AttentionFlags())
    module = load_triton_module(emit_triton_module([spec]), spec.name)
    assert {"loader_attn": module.loader_attn} == module.LAUNCHERS
    assert "IS_CAUSAL" in inspect.getsource(module.loader_attn_kernel.fn)


def test_bad_module_name_rejected() -> None:
    with pytest.raises(ValueError):
        load_triton_module("X = 1\n", "../../etc/passwd")
