"""The examples in the public modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import types

import pytest

from archdsl.codegen.triton import emit, loader, spec


@pytest.mark.parametrize("module", [spec, emit, loader], ids=lambda m: m.__name__)
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
