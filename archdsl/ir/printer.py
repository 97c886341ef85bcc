"""IR -> spec text. The text parses back to the same IR: parse(print(ir)) == ir.

The printer writes resolved values (numbers, not the parameter arithmetic that made
them) and every option explicitly, so the output is canonical and deterministic.
"""

from __future__ import annotations

from archdsl.ir.expr import BinOp, Call, Expr, Name, Neg, Num, Str
from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Arch, Assign, Block, BlockRef, Head, Mixer, Model, Repeat, Stage
from archdsl.vocab import HEADS, MEMORY_CHOICES

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "**": 4}


def print_arch(arch: Arch) -> str:
    """The canonical spec text of `arch`."""
    out = [
        f"arch {arch.name}("
        + ", ".join(f"{p.name} = {_param(p.value)}" for p in arch.params)
        + ")",
        "",
    ]
    for mixer in arch.mixers:
        out.append(print_mixer(mixer))
        out.append("")
    for block in arch.blocks:
        out.append(print_block(block))
        out.append("")
    if arch.model is not None:
        out.append(print_model(arch.model))
    return "\n".join(out).rstrip() + "\n"


def _param(value: object) -> str:
    if isinstance(value, str):
        if '"' in value or "\\" in value or "\n" in value:
            raise ValueError(f"string parameter {value!r} cannot be written as spec text")
        return '"' + value + '"'
    return _value(value)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text if "inf" not in text and "nan" not in text else "0"
    if isinstance(value, str):
        return value
    return str(value)


def print_expr(expr: Expr, parent: int = 0) -> str:
    if isinstance(expr, Num):
        return (
            _value(expr.value)
            if not (
                isinstance(expr.value, int | float)
                and not isinstance(expr.value, bool)
                and expr.value < 0
            )
            else f"({_value(expr.value)})"
        )
    if isinstance(expr, Str):
        return '"' + expr.value + '"'
    if isinstance(expr, Name):
        return expr.name
    if isinstance(expr, Neg):
        return f"-{print_expr(expr.operand, 3)}"
    if isinstance(expr, BinOp):
        prec = _PRECEDENCE[expr.op]
        right_assoc = expr.op == "**"
        lhs = print_expr(expr.lhs, prec + (1 if right_assoc else 0))
        rhs = print_expr(expr.rhs, prec if right_assoc else prec + 1)
        text = f"{lhs} {expr.op} {rhs}"
        return f"({text})" if prec < parent else text
    assert isinstance(expr, Call)
    parts = [print_expr(a) for a in expr.args] + [
        f"{k.name} = {print_expr(k.value)}" for k in expr.kwargs
    ]
    return f"{expr.func}(" + ", ".join(parts) + ")"


def _options(name: str, **options: object) -> str:
    parts = [f"{k} = {_print_option(v)}" for k, v in options.items() if v is not None]
    return f"{name}(" + ", ".join(parts) + ")"


def _print_option(value: object) -> str:
    if isinstance(value, Gate):
        return print_gate(value)
    if isinstance(value, float) and value < 0:
        return f"-{_value(-value)}"
    return _value(value)


def print_gate(gate: Gate) -> str:
    if gate.mode == "data":
        return _options("data", per=gate.per, rank=gate.rank, act=gate.act)
    if gate.mode == "learned":
        return _options("learned", per=gate.per, init=gate.value, act=gate.act)
    if gate.formula is not None:
        return print_expr(gate.formula)
    return _value(gate.value)


def print_mixer(mixer: Mixer) -> str:
    if isinstance(mixer, Memory):
        return print_memory(mixer)
    fields = mixer.model_dump(exclude={"loc", "name"})
    kind = (
        "attention"
        if isinstance(mixer, Attention)
        else "matrix"
        if isinstance(mixer, MatrixMixer)
        else "conv"
    )
    assert isinstance(mixer, Attention | MatrixMixer | Conv)
    return f"mixer {mixer.name} = " + _options(kind, **fields)


def print_memory(mem: Memory) -> str:
    def part(role: str, node: Structure | Bias | Retention | Learner) -> str:
        schema = MEMORY_CHOICES[role][node.kind]
        fields = {k: getattr(node, k) for k in schema.options}
        return _options(node.kind, **fields)

    features = {k: getattr(mem.features, k) for k in type(mem.features).model_fields if k != "loc"}
    lines = [
        f"memory {mem.name} {{",
        f"  structure = {part('structure', mem.structure)}",
        f"  bias      = {part('bias', mem.bias)}",
        f"  retention = {part('retention', mem.retention)}",
        f"  learner   = {part('learner', mem.learner)}",
        f"  batch     = {mem.batch}",
        f"  features  = {_options('qkv', **features)}",
        "}",
    ]
    return "\n".join(lines)


def print_block(block: Block) -> str:
    segment = f" segment({block.segment})" if block.segment else ""
    lines = [f"block {block.name}(" + ", ".join(block.params) + f"){segment} {{"]
    for stmt in block.body:
        if isinstance(stmt, Assign):
            lines.append(f"  {stmt.target} = {print_expr(stmt.value)}")
        else:
            lines.append(f"  return {print_expr(stmt.value)}")
    lines.append("}")
    return "\n".join(lines)


def print_head(head: Head) -> str:
    fields = {k: getattr(head, k) for k in type(head).model_fields if k not in ("loc", "kind")}
    allowed = HEADS[head.kind].options
    return _options(head.kind, **{k: v for k, v in fields.items() if k in allowed})


def print_stage(stage: Stage) -> str:
    if isinstance(stage, BlockRef):
        return stage.block
    assert isinstance(stage, Repeat)
    shared = ", shared = true" if stage.shared else ""
    body = " ".join(print_stage(s) for s in stage.body)
    return f"repeat({stage.n}{shared}) {{ {body} }}"


def print_model(model: Model) -> str:
    stages = "\n".join(f"  {print_stage(s)}" for s in model.stages)
    return f"model = {print_head(model.head)} {{\n{stages}\n}}"
