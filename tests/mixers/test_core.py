"""The functional-core entry point: docstring example, backends, registry coverage."""

from __future__ import annotations

import doctest
import typing

import pytest

import archdsl.mixers.core as core_module
from archdsl.ir.mixers import MatrixClass, MatrixMixer
from archdsl.mixers.core import core_for_mixer
from archdsl.mixers.registry import MATRIX_CLASSES, implementation


def test_docstring_example_runs() -> None:
    assert doctest.testmod(core_module).failed == 0


def test_every_ir_class_has_both_forms() -> None:
    assert set(typing.get_args(MatrixClass)) == set(MATRIX_CLASSES)
    for cls in MATRIX_CLASSES:
        for data in (False, True):
            impl = implementation(cls, data)
            assert impl.fast is not impl.materialize


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        core_for_mixer(MatrixMixer(name="m", cls="lowrank"), backend="cuda-magic")
