"""No spec, however hostile, makes generated code execute anything it should not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archdsl
from archdsl import builder as B

HEAD = "arch t(d_model = 8, heads = 2, layers = 1, vocab = 5)"
HOSTILE = [
    'x"); __import__("os").system("touch /tmp/archdsl_pwned") #',
    "x\nimport os\nos.system('touch /tmp/archdsl_pwned')",
    "__import__('os')",
    "a b",
    "",
    "1abc",
]


def _arch(
    block_name: str = "b", var: str = "h", mixer: str = "attn", param: str = "x"
) -> archdsl.Spec:
    arch = B.arch(
        "t",
        d_model=8,
        heads=2,
        layers=1,
        vocab=5,
        mixers=[B.attention(mixer, causal=True)],
        blocks=[
            B.block(block_name, [param], B.let(var, B.call(mixer, param)), B.ret(B.add(param, var)))
        ],
        model=B.model(B.causal_lm(vocab=5), block_name),
    )
    return arch


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("where", ["block_name", "var", "mixer", "param"])
def test_hostile_names_in_python_built_ir_are_refused(name: str, where: str) -> None:
    arch = _arch(**{where: name})
    with pytest.raises(archdsl.ArchError, match="not a valid name"):
        archdsl.build(arch)
    assert not Path("/tmp/archdsl_pwned").exists()


@pytest.mark.parametrize(
    "text",
    [
        HEAD + '\nblock b"); __import__("os")(x) { return x }',
        "arch t(d_model = 8, heads = 2, layers = 1, vocab = 5, s = \"\n__import__('os')\")",
        HEAD + "\nblock b(x) { return __import__(x) }",
        HEAD + '\nblock b(x) { return x + "__import__" }\nmodel = causal_lm(vocab) { b }',
    ],
)
def test_hostile_text_specs_are_errors(text: str) -> None:
    with pytest.raises(archdsl.ArchError):
        archdsl.build(archdsl.loads(text, "hostile.arch"))
    assert not Path("/tmp/archdsl_pwned").exists()


def test_python_keywords_and_module_names_are_fine_as_spec_names() -> None:
    """Spec names are always affixed in generated code, so these cannot shadow anything."""
    src = """
arch t(d_model = 8, heads = 2, layers = 1, vocab = 5)
mixer nn = attention(causal)
block self(torch) {
  Tensor = nn(rmsnorm(torch))
  ctx = torch + Tensor
  return ctx
}
block class(import) { return self(import) }
model = causal_lm(vocab) { class }
"""
    model = archdsl.build(archdsl.loads(src, "names.arch"))
    assert model(torch.randint(0, 5, (1, 4))).shape == (1, 4, 5)


def test_string_parameters_reach_generated_code_only_as_data() -> None:
    src = (
        "arch t(d_model = 8, heads = 2, layers = 1, vocab = 5, "
        'note = "\'; import os; os.system(1) #")\n'
        + ("block b(x) { return x + rmsnorm(x) }\nmodel = causal_lm(vocab) { b }")
    )
    compiled = archdsl.compile_spec(archdsl.loads(src, "s.arch"))
    code = compiled.files["model.py"]
    import ast

    tree = ast.parse(code)
    imported = {
        n.names[0].name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
    }
    assert "os" not in imported
    assert compiled.build()(torch.randint(0, 5, (1, 3))).shape == (1, 3, 5)
