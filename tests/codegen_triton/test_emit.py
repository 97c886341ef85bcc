"""Generated source: deterministic, structured like Triton's tutorials, safe from spec text."""

from __future__ import annotations

import ast

import pytest

from archdsl.codegen.triton.emit import BANNER, emit_triton_module
from archdsl.codegen.triton.spec import AttentionFlags, GatedLinearFlags, KernelSpec

GLA = KernelSpec(
    "gated_linear",
    "gla_memory",
    "specs/gla.arch:7:3 memory",
    GatedLinearFlags(decay_per_channel=True, use_initial_state=True, store_final_state=True),
)
SWA = KernelSpec(
    "attention", "swa", "specs/titans.arch:12:1 mixer swa", AttentionFlags(window=512, sinks=4)
)

GATED_LINEAR_CONSTEXPRS = [
    "HAS_DECAY",
    "DECAY_PER_CHANNEL",
    "HAS_LR",
    "USE_INITIAL_STATE",
    "STORE_FINAL_STATE",
    "BLOCK_T",
    "BLOCK_K",
    "BLOCK_V",
]
ATTENTION_CONSTEXPRS = [
    "IS_CAUSAL",
    "WINDOW",
    "PREFIX",
    "SINKS",
    "HAS_ALIBI",
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_D",
]


def _defined_names(source: str) -> list[str]:
    tree = ast.parse(source)
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [a.asname or a.name for a in node.names]
        else:
            names.append(type(node).__name__)  # anything else is unexpected
    return names


def test_emission_is_deterministic() -> None:
    first = emit_triton_module([GLA, SWA])
    second = emit_triton_module([GLA, SWA])
    assert first == second
    rebuilt = KernelSpec(GLA.family, GLA.name, GLA.origin, GLA.flags)
    assert emit_triton_module([rebuilt, SWA]) == first


def test_flags_change_the_source() -> None:
    other = KernelSpec("attention", "swa", SWA.origin, AttentionFlags(window=256, sinks=4))
    assert emit_triton_module([other]) != emit_triton_module([SWA])


def test_structure_reads_like_a_tutorial() -> None:
    source = emit_triton_module([GLA, SWA])
    assert source.startswith(BANNER)
    assert "# gla_memory: gated_linear kernel for spec node specs/gla.arch:7:3 memory" in source
    assert "# swa: attention kernel for spec node specs/titans.arch:12:1 mixer swa" in source
    for flag in GATED_LINEAR_CONSTEXPRS + ATTENTION_CONSTEXPRS:
        assert f"    {flag}: tl.constexpr," in source, flag
    # gated linear: 1 kernel; attention: scores, key range, block, kv load, kernel,
    # 2 bwd kernels, dq block
    assert source.count("@triton.jit") == 9
    assert "pid_bh = tl.program_id(0)" in source
    assert "pid_m = tl.program_id(0)" in source
    assert "offs_t = tl.arange(0, BLOCK_T)" in source
    assert "offs_m = start_m + tl.arange(0, BLOCK_M)" in source
    assert "mask=" in source
    # launchers pin the spec's flags
    assert "DECAY_PER_CHANNEL=True," in source
    assert "WINDOW=512," in source and "SINKS=4," in source
    assert _defined_names(source) == [
        "torch",
        "triton",
        "tl",
        "gla_memory_kernel",
        "gla_memory",
        "swa_masked_scores",
        "swa_key_range",
        "swa_attend_block",
        "swa_load_kv",
        "swa_kernel",
        "swa",
        "swa_bwd_dkdv_kernel",
        "swa_bwd_dq_kernel",
        "swa_dq_block",
        "swa_backward",
        "LAUNCHERS",
    ]
    compile(source, "<generated>", "exec")


def test_every_line_is_short_and_ascii() -> None:
    source = emit_triton_module([GLA, SWA])
    for line in source.splitlines():
        assert len(line) <= 100, line
        assert line.isascii(), line


HOSTILE_ORIGIN = "x.arch:1:1\nimport os; os.system('echo pwned')\r\n# -*- coding: rot13 -*-\u2028y"


def test_hostile_origin_stays_inside_a_comment() -> None:
    spec = KernelSpec("gated_linear", "glin", HOSTILE_ORIGIN, GatedLinearFlags())
    source = emit_triton_module([spec])
    assert "import os" in source  # the text is kept, but only as a comment ...
    for line in source.splitlines():
        if "os.system" in line or "coding" in line:
            assert line.startswith("#"), line
    # ... never on the first two lines, where Python honours coding declarations
    assert "coding" not in "".join(source.splitlines(keepends=True)[:2])
    assert _defined_names(source) == ["torch", "triton", "tl", "glin_kernel", "glin", "LAUNCHERS"]


def test_launcher_table_maps_names_to_launchers() -> None:
    source = emit_triton_module([GLA, SWA])
    tree = ast.parse(source)
    table = tree.body[-1]
    assert isinstance(table, ast.Assign)
    assert ast.literal_eval(
        ast.unparse(table.value).replace("gla_memory,", "1,").replace("swa}", "2}")
    ) == {"gla_memory": 1, "swa": 2}


def test_duplicate_and_colliding_names_rejected() -> None:
    with pytest.raises(ValueError, match="already defined"):
        emit_triton_module([SWA, SWA])
    # the launcher of "swa_kernel" would clash with the kernel of "swa"
    clash = KernelSpec("gated_linear", "swa_kernel", "", GatedLinearFlags())
    with pytest.raises(ValueError, match="already defined"):
        emit_triton_module([SWA, clash])


def test_empty_or_foreign_input_rejected() -> None:
    with pytest.raises(ValueError):
        emit_triton_module([])
    with pytest.raises(TypeError):
        emit_triton_module(["swa"])  # type: ignore[list-item]


def test_mutated_spec_is_revalidated() -> None:
    spec = KernelSpec("attention", "ok", "fine", AttentionFlags())
    object.__setattr__(spec, "name", "ok\nimport os")
    with pytest.raises(ValueError):
        emit_triton_module([spec])
    spec = KernelSpec("attention", "ok", "fine", AttentionFlags())
    object.__setattr__(spec, "origin", "a\nimport os")
    source = emit_triton_module([spec])
    assert "\nimport os" not in source
