"""Front end: round trip, builder == text, overrides, parameter arithmetic, plan."""

from __future__ import annotations

from pathlib import Path

import pytest

import archdsl
from archdsl import builder as B
from archdsl.frontend.load import load_sources
from archdsl.frontend.resolve import resolve
from archdsl.ir.printer import print_arch

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_round_trip(spec: Path) -> None:
    ir = archdsl.load(spec).ir
    text = print_arch(ir)
    again = archdsl.loads(text, "printed.arch").ir
    assert again == ir
    assert print_arch(again) == text


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_ir_json_round_trip(spec: Path) -> None:
    from archdsl.ir.spec import Arch

    ir = archdsl.load(spec).ir
    assert Arch.model_validate_json(ir.model_dump_json()) == ir


def test_builder_makes_the_same_ir_as_the_text() -> None:
    built = B.arch(
        "transformer",
        d_model=512,
        heads=8,
        layers=8,
        vocab=32000,
        mixers=[B.attention("attn", causal=True, pos="rope", rope_base=10000.0)],
        blocks=[
            B.block(
                "layer",
                ["x"],
                B.let("x", B.add("x", B.call("attn", B.call("rmsnorm", "x")))),
                B.ret(B.add("x", B.call("swiglu", B.call("rmsnorm", "x"), expand=8 / 3))),
            )
        ],
        model=B.model(B.causal_lm(vocab=32000), B.repeat(8, "layer")),
    )
    text = archdsl.load(ROOT / "specs" / "transformer.arch").ir
    assert built == text
    different = built.model_copy(update={"params": built.params[:1]})
    assert different != text


def test_overrides_reresolve_dependent_values() -> None:
    src = """
arch a(d_model = 64, heads = 4, layers = 2, vocab = 10)
let hidden = d_model * 2
block b(x) { return x + linear(gelu(linear(x, out = hidden)), out = d_model) }
model = causal_lm(vocab) { repeat(layers) b }
"""
    spec = archdsl.loads(src, "a.arch")
    small = spec.with_params(d_model=16, layers=3)
    assert small.ir.d_model == 16 and small.ir.param("hidden") == 32
    assert small.ir.model.stages[0].n == 3
    with pytest.raises(archdsl.ArchError, match="no parameter `d_modle`"):
        spec.with_params(d_modle=3)


def test_dimension_arithmetic_stays_integer() -> None:
    src = """
arch a(d_model = 96, heads = 4, layers = 1, vocab = 10)
let head_dim = d_model / heads
let third = d_model // 5
mixer m = attention(causal, heads = d_model / 32)
block b(x) { return x + m(x) }
model = causal_lm(vocab) { b }
"""
    ir = archdsl.loads(src, "a.arch").ir
    assert ir.param("head_dim") == 24 and isinstance(ir.param("head_dim"), int)
    assert ir.param("third") == 19
    assert ir.mixers[0].heads == 3


def test_source_locations_flow_into_the_ir() -> None:
    ir = resolve(load_sources(path=ROOT / "specs" / "transformer.arch"))
    attn = ir.mixers[0]
    assert attn.loc is not None and attn.loc.line > 1 and attn.loc.column == 1
    lines = (ROOT / "specs" / "transformer.arch").read_text().splitlines()
    assert lines[attn.loc.line - 1].startswith("mixer attn")
    stmt = ir.blocks[0].body[0]
    assert stmt.loc is not None and lines[stmt.loc.line - 1][stmt.loc.column - 1 :].startswith(
        "x = x + attn("
    )


def test_check_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from archdsl.cli.main import main;"
        "rc = main(['check', 'specs/transformer.arch']);"
        "assert 'torch' not in sys.modules and 'triton' not in sys.modules, 'check imported torch';"
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_plan_names_a_rule_for_each_mixer() -> None:
    from archdsl.lower.plan import lower

    spec = archdsl.load(ROOT / "specs" / "transformer.arch")
    plan = lower(spec.ir, spec.ir_hash())
    assert [m.name for m in plan.mixers] == ["attn"]
    assert "flash attention" in plan.mixers[0].algorithm and not plan.mixers[0].fallback
