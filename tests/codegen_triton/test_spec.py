"""KernelSpec validation: hostile names are rejected, origins sanitised, flags typed."""

from __future__ import annotations

import pytest

from archdsl.codegen.triton.spec import (
    MAX_ORIGIN_CHARS,
    AttentionFlags,
    GatedLinearFlags,
    KernelSpec,
    sanitise_origin,
)

HOSTILE_NAMES = [
    "",
    "1abc",
    "a b",
    "x\nimport os",
    "x; import os",
    "x)",
    "café",  # non-ASCII identifiers are legal Python but not allowed here
    "class",
    "match",  # soft keyword
    "__import__",
    "__init__",
    "torch",
    "tl",
    "LAUNCHERS",
    "a" * 65,
    "name\x00",
    "x#",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        KernelSpec("attention", name, "", AttentionFlags())


def test_non_string_name_rejected() -> None:
    with pytest.raises(TypeError):
        KernelSpec("attention", 3, "", AttentionFlags())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["glin", "_private", "Mamba2_layer3", "a1", "x" * 64])
def test_plain_identifiers_accepted(name: str) -> None:
    assert KernelSpec("gated_linear", name, "", GatedLinearFlags()).name == name


@pytest.mark.parametrize(
    "origin",
    [
        "spec.arch:1:1\nimport os",
        "a\rb",
        "a\r\nb",
        "nul\x00byte",
        "line\u2028separator",
        "para\u2029graph",
        "form\x0cfeed",
        "vt\x0btab",
        "nel\x85line",
        "ünïcödé",
    ],
)
def test_origin_becomes_one_printable_ascii_line(origin: str) -> None:
    spec = KernelSpec("attention", "a", origin, AttentionFlags())
    assert spec.origin == sanitise_origin(origin)
    assert all(" " <= ch <= "~" for ch in spec.origin)
    assert len(spec.origin.splitlines()) <= 1
    assert len(spec.origin) == len(origin)  # replaced one for one, not dropped


def test_long_origin_truncated() -> None:
    spec = KernelSpec("attention", "a", "x" * 1000, AttentionFlags())
    assert len(spec.origin) == MAX_ORIGIN_CHARS
    assert spec.origin.endswith("...")


def test_family_and_flags_must_agree() -> None:
    with pytest.raises(TypeError):
        KernelSpec("attention", "a", "", GatedLinearFlags())
    with pytest.raises(TypeError):
        KernelSpec("gated_linear", "a", "", AttentionFlags())
    with pytest.raises(ValueError):
        KernelSpec("conv", "a", "", AttentionFlags())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: GatedLinearFlags(has_decay=1),  # type: ignore[arg-type]
        lambda: GatedLinearFlags(chunk_size=True),
        lambda: GatedLinearFlags(chunk_size=16.0),  # type: ignore[arg-type]
        lambda: AttentionFlags(window="3"),  # type: ignore[arg-type]
        lambda: AttentionFlags(scale=1),  # type: ignore[arg-type]
        lambda: AttentionFlags(is_causal="no"),  # type: ignore[arg-type]
    ],
)
def test_flag_types_are_exact(make: object) -> None:
    with pytest.raises(TypeError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "make",
    [
        lambda: GatedLinearFlags(chunk_size=24),
        lambda: GatedLinearFlags(chunk_size=8),
        lambda: GatedLinearFlags(chunk_size=256),
        lambda: GatedLinearFlags(has_decay=False, decay_per_channel=True),
        lambda: AttentionFlags(window=-1),
        lambda: AttentionFlags(prefix=-2),
        lambda: AttentionFlags(sinks=-3),
        lambda: AttentionFlags(scale=float("nan")),
        lambda: AttentionFlags(scale=float("inf")),
        lambda: AttentionFlags(scale=-1.0),
    ],
)
def test_flag_values_checked(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
