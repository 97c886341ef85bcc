"""Grammar fuzzing with hypothesis.

(a) Random *valid* specs, built from the closed vocabulary (`archdsl.vocab`): they must
    load, and the IR printer's text must parse back to an equal IR (round trip).
(b) Random *mutations* of valid specs (characters and tokens deleted, duplicated,
    swapped; quotes, newlines, unicode, `__import__` inserted): loading must either
    succeed or raise `ArchError` -- never any other exception.
(c) Pathological inputs found while fuzzing, pinned as plain tests.

The runs are derandomised (same examples every time) so that CI is reproducible; set
ARCHDSL_FUZZ=explore for a longer random search.
"""

from __future__ import annotations

import os
import signal
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl import vocab
from archdsl.frontend.schema import REQUIRED, Opt, Schema
from archdsl.ir.printer import print_arch

ROOT = Path(__file__).resolve().parent.parent
EXPLORE = os.environ.get("ARCHDSL_FUZZ") == "explore"


def fuzz(examples: int) -> settings:
    """Hypothesis settings: `examples` per test, reproducible unless exploring."""
    return settings(
        max_examples=10 * examples if EXPLORE else examples,
        deadline=None,
        derandomize=not EXPLORE,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- (a) valid specs

PER = ("head", "channel")
NICE_FLOATS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 1e-05, 8.0)


def _float_in(opt: Opt) -> st.SearchStrategy[float]:
    def ok(v: float) -> bool:
        if opt.min is not None and (v <= opt.min if opt.min_exclusive else v < opt.min):
            return False
        return opt.max is None or v <= opt.max

    return st.sampled_from([v for v in NICE_FLOATS if ok(v)])


def _int_in(opt: Opt) -> st.SearchStrategy[int]:
    lo = int(opt.min or 0) + (1 if opt.min_exclusive else 0)
    hi = int(opt.max) if opt.max is not None else lo + 8
    return st.integers(lo, min(hi, lo + 8))


def _gate_text(role: str, per: tuple[str, ...]) -> st.SearchStrategy[str]:
    data = st.builds(
        lambda per, rank, act: f"data(per = {per}, rank = {rank}{act})",
        st.sampled_from(per),
        st.integers(0, 4),
        st.sampled_from(["", ", act = sigmoid", ", act = logsigmoid", ", act = mamba"]),
    )
    learned = st.builds(
        lambda per, init: f"learned(per = {per}, init = {init})",
        st.sampled_from(per),
        st.sampled_from([0.1, 0.5, 0.9]),
    )
    if role == "alpha":
        const = st.sampled_from(["0.9", "1", "0.99", "1 - 2 ** (-5 - head)"])
    elif role == "beta":
        const = st.sampled_from(["0", "0.5", "0.9"])
    else:
        const = st.sampled_from(["0.1", "1", "0.5 * 2"])
    return st.one_of(st.just("data"), data, learned, const)


def option_text(opt: Opt, gate_per: tuple[str, ...] = PER) -> st.SearchStrategy[str]:
    """Text of a valid value for one schema option (gates: `per` drawn from `gate_per`)."""
    if opt.kind == "gate":
        per = ("head",) if opt.role == "delta" else gate_per  # Huber delta: one per head
        return _gate_text(opt.role, per)
    if opt.kind == "choice":
        return st.sampled_from(list(opt.choices))
    if opt.kind == "bool":
        return st.sampled_from(["true", "false"])
    if opt.kind == "int":
        return _int_in(opt).map(str)
    return _float_in(opt).map(repr)


@st.composite
def call_text(
    draw: st.DrawFn,
    schema: Schema,
    fixed: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    gate_per: tuple[str, ...] = PER,
) -> str:
    """`name(opt = value, ...)` with a random subset of the schema's options (required ones
    always), options in random order; `fixed` options are forced to the given text."""
    fixed = dict(fixed or {})
    parts: list[str] = []
    for name, opt in schema.options.items():
        if name in fixed or name in skip:
            continue
        if opt.default is REQUIRED or draw(st.booleans()):
            parts.append(f"{name} = {draw(option_text(opt, gate_per))}")
    parts += [f"{k} = {v}" for k, v in fixed.items()]
    parts = draw(st.permutations(parts))
    if not parts and draw(st.booleans()):
        return schema.name
    return f"{schema.name}(" + ", ".join(parts) + ")"


@st.composite
def memory_text(draw: st.DrawFn, name: str) -> str:
    structure = draw(st.sampled_from(sorted(vocab.STRUCTURES)))
    bias = draw(st.sampled_from(sorted(vocab.BIASES)))
    learners = sorted(vocab.LEARNERS)
    if not (structure == "matrix" and bias == "l2"):
        learners.remove("implicit")  # Longhorn's closed form: matrix + l2 only
    learner = draw(st.sampled_from(learners))
    retention = draw(st.sampled_from(sorted(vocab.RETENTIONS)))
    ret_fixed = {"tie_key": "false"} if retention == "decay" else {}
    per = ("head",) if structure == "mlp" else PER  # mlp memories have per-head rates only
    lines = [
        f"  structure = {draw(call_text(vocab.STRUCTURES[structure]))}",
        f"  bias = {draw(call_text(vocab.BIASES[bias]))}",
        f"  retention = {draw(call_text(vocab.RETENTIONS[retention], ret_fixed, gate_per=per))}",
        f"  learner = {draw(call_text(vocab.LEARNERS[learner], gate_per=per))}",
    ]
    if draw(st.booleans()):
        lines.append(f"  batch = {draw(st.sampled_from([1, 4, 16]))}")
    if draw(st.booleans()):
        # the normaliser is a denominator for the matrix + dot family only
        skip = (
            ("dk", "dv") if structure == "matrix" and bias == "dot" else ("dk", "dv", "normalizer")
        )
        lines.append(f"  features = {draw(call_text(vocab.FEATURES, skip=skip))}")
    lines = draw(st.permutations(lines))
    return f"memory {name} {{\n" + "\n".join(lines) + "\n}"


@st.composite
def mixer_text(draw: st.DrawFn, name: str, causal: bool, heads: int, d_model: int) -> str:
    kind = draw(st.sampled_from(sorted(vocab.MIXER_KINDS)))
    schema = vocab.MIXER_KINDS[kind]
    if kind == "attention":
        fixed = {"causal": "true" if causal else draw(st.sampled_from(["true", "false"]))}
        fixed["heads"] = str(heads)
        fixed["kv_heads"] = str(draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0])))
        return f"mixer {name} = " + draw(call_text(schema, fixed))
    if kind == "matrix":
        cls = draw(st.sampled_from([c for c in vocab.MATRIX_CLASSES if c != "dense"]))
        direction = "causal" if causal else draw(st.sampled_from(["causal", "bidirectional"]))
        headdims = [str(h) for h in (8, 16, 32) if (2 * d_model) % h == 0]
        fixed = {"expand": "2", "headdim": draw(st.sampled_from(headdims))}
        body = draw(call_text(schema, fixed, skip=("cls", "direction")))
        flags = draw(st.permutations([cls, direction]))
        return f"mixer {name} = matrix({', '.join(flags)}, {body[len('matrix(') :]}"
    fixed = {"causal": "true" if causal else draw(st.sampled_from(["true", "false"]))}
    return f"mixer {name} = " + draw(call_text(schema, fixed))


@st.composite
def op_call(draw: st.DrawFn, inner: str, causal: bool) -> str:
    """A width-preserving op applied to `inner` (linear keeps d_model via `out`)."""
    name = draw(st.sampled_from(sorted(vocab.BLOCK_OPS)))
    op = vocab.BLOCK_OPS[name]
    fixed: dict[str, str] = {}
    if name == "linear":
        fixed["out"] = draw(st.sampled_from(["d_model", "heads * (d_model / heads)"]))
    if name == "shortconv" and causal:
        fixed["causal"] = "true"
    options = draw(call_text(op.schema, fixed))
    args = options[len(name) + 1 : -1] if options.endswith(")") else ""
    return f"{name}({inner}" + (f", {args}" if args else "") + ")"


@st.composite
def expr_text(draw: st.DrawFn, leaves: list[str], mixers: list[str], causal: bool) -> str:
    """A [B, T, d_model] expression over `leaves` (bound names) and mixer calls."""
    depth = draw(st.integers(1, 3))
    text = draw(st.sampled_from(leaves))
    for _ in range(depth):
        choice = draw(st.integers(0, 4))
        if choice == 0 and mixers:
            text = f"{draw(st.sampled_from(mixers))}({text})"
        elif choice == 1:
            text = draw(op_call(text, causal))
        elif choice == 2:
            text = f"{draw(st.sampled_from(leaves))} {draw(st.sampled_from('+-*'))} ({text})"
        elif choice == 3:
            text = f"{draw(st.sampled_from(['0.5', '2', 'heads']))} * {text}"
        else:
            text = f"linear(gelu(linear({text}, out = 2 * d_model)), out = d_model)"
    return text


@st.composite
def block_text(
    draw: st.DrawFn, name: str, mixers: list[str], callees: list[str], causal: bool
) -> str:
    """A block whose every binding is used and which calls each mixer in `mixers`."""
    lines: list[str] = []
    prev = "x"
    bound = ["x"]
    todo = list(mixers) + list(callees)
    n_extra = draw(st.integers(0, 2))
    for i in range(len(todo) + n_extra):
        value = draw(expr_text(bound, mixers, causal))
        if i < len(todo):
            value = f"{todo[i]}({value})"
        value = f"{prev} + {value}"
        target = draw(st.sampled_from(["x", f"h{i}"]))
        lines.append(f"  {target} = {value}")
        prev = target
        if target not in bound:
            bound.append(target)
    ret = draw(expr_text([prev], mixers, causal))
    lines.append(f"  return {prev} + {ret}" if draw(st.booleans()) else f"  return {ret}")
    return f"block {name}(x) {{\n" + "\n".join(lines) + "\n}"


@st.composite
def stages_text(draw: st.DrawFn, blocks: list[str]) -> str:
    """Model stages that reach every block at least once (plain, repeat, nested)."""
    parts: list[str] = []
    for b in blocks:
        form = draw(st.integers(0, 3))
        if form == 0:
            parts.append(b)
        elif form == 1:
            parts.append(f"repeat(layers) {b}")
        elif form == 2:
            parts.append(f"repeat({draw(st.integers(1, 3))}, shared) {{ {b} {b} }}")
        else:
            parts.append(f"repeat(n = 2) {{ repeat(layers) {{ {b} }} }}")
    return " ".join(draw(st.permutations(parts)))


@st.composite
def valid_spec(draw: st.DrawFn) -> str:
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    d_model = heads * draw(st.sampled_from([8, 16, 32]))
    head_kind = draw(st.sampled_from(sorted(vocab.HEADS)))
    causal = head_kind in vocab.CAUSAL_HEADS
    params = [
        f"d_model = {d_model}",
        f"heads = {heads}",
        f"layers = {draw(st.integers(1, 4))}",
        f"vocab = {draw(st.integers(2, 1000))}",
    ]
    if draw(st.booleans()):
        params.append(f"window = {draw(st.integers(0, 256))}")
    params = draw(st.permutations(params))
    decls: list[str] = []
    mixers: list[str] = []
    for i in range(draw(st.integers(0, 2))):
        decls.append(draw(memory_text(f"mem{i}")))
        mixers.append(f"mem{i}")
    for i in range(draw(st.integers(0, 2))):
        decls.append(draw(mixer_text(f"mix{i}", causal, heads, d_model)))
        mixers.append(f"mix{i}")
    if draw(st.booleans()):
        decls.append("let head_dim = d_model / heads")
    n_blocks = draw(st.integers(1, 3))
    names = [f"block{i}" for i in range(n_blocks)]
    for i, name in enumerate(names):
        mine = mixers[i::n_blocks]
        callees = names[i + 1 : i + 2] if draw(st.booleans()) else []
        decls.append(draw(block_text(name, mine, callees, causal)))
    decls = draw(st.permutations(decls))
    schema = vocab.HEADS[head_kind]
    fixed = {"vocab": "vocab"} | (
        {"classes": str(draw(st.integers(2, 9)))} if "classes" in schema.options else {}
    )
    head = draw(call_text(schema, fixed))
    model = f"model = {head} {{ {draw(stages_text(names))} }}"
    header = f"arch fuzz({', '.join(params)})"
    return "\n\n".join([header, *decls, model]) + "\n"


@fuzz(120)
@given(valid_spec())
def test_random_valid_specs_load_and_round_trip(text: str) -> None:
    spec = archdsl.loads(text, "<fuzz>")
    printed = print_arch(spec.ir)
    again = archdsl.loads(printed, "<printed>")
    assert again.ir == spec.ir, f"round trip changed the IR:\n{text}\n--- printed:\n{printed}"
    assert print_arch(again.ir) == printed, "printing is not a fixed point"


# ---------------------------------------------------------------- (b) mutations

SEEDS = [ROOT / "specs" / "transformer.arch"]
SEED_TEXTS = [p.read_text() for p in SEEDS if p.exists()] + [
    """arch seed(d_model = 64, heads = 4, layers = 2, vocab = 100, window = 16)
let head_dim = d_model / heads

memory mem {
  structure = mlp(depth = 2, expand = 4, act = silu, residual = true)
  bias      = huber(delta = data)
  retention = decay(alpha = 1 - 2 ** (-5 - head), when = after)
  learner   = momentum(lr = data(per = channel), beta = learned)
  batch     = 4
  features  = qkv(conv = 4, act = silu, norm = l2)
}

mixer swa = attention(causal, window = window, pos = rope, persistent = 4)
mixer ssm = matrix(semiseparable, causal, state = 16, headdim = 16)

block mag(x) {
  h = rmsnorm(x)
  x = x + linear(swa(h) * sigmoid(mem(h)), out = d_model) + ssm(h)
  return x + swiglu(rmsnorm(x), expand = 4)
}

model = causal_lm(vocab, tied = true) { repeat(layers) { mag } }
""",
    """arch enc(d_model = 32, heads = 2, layers = 1, vocab = 50)
mixer mix = matrix(quasiseparable, bidirectional, state = 8, headdim = 16)
block b(x) {
  y = shortconv(layernorm(x), kernel = 3, causal = false)
  return x + mix(y) - 0.5 * y
}
model = masked_lm(vocab) { repeat(layers, shared) b }
""",
]

INSERTS = [
    '"',
    "'",
    "\n",
    "\t",
    "{",
    "}",
    "(",
    ")",
    "=",
    ",",
    "**",
    "-",
    "/ 0",
    "#",
    "__import__",
    '__import__("os")',
    'import "x.arch"',
    "return",
    "é",
    "Ω",
    "\u200b",
    "\x00",
    "\\",
    "0" * 30,
    "1e999",
    "none",
    "true",
    "model",
]
TOKEN_SPLIT = string.whitespace + "(){},=+-*/"


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    word = ""
    for ch in text:
        if ch in TOKEN_SPLIT:
            if word:
                out.append(word)
            out.append(ch)
            word = ""
        else:
            word += ch
    if word:
        out.append(word)
    return out


@st.composite
def mutated_spec(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


def _pos(draw: st.DrawFn, text: str) -> int:
    return draw(st.integers(0, max(len(text) - 1, 0)))


def _delete_chars(draw: st.DrawFn, text: str) -> str:
    i = _pos(draw, text)
    return text[:i] + text[i + draw(st.integers(1, 4)) :]


def _duplicate_chars(draw: st.DrawFn, text: str) -> str:
    i = _pos(draw, text)
    j = i + draw(st.integers(1, 12))
    return text[:j] + text[i:j] + text[j:]


def _swap_chars(draw: st.DrawFn, text: str) -> str:
    i, j = sorted((_pos(draw, text), _pos(draw, text)))
    if i == j:
        return text
    return text[:i] + text[j] + text[i + 1 : j] + text[i] + text[j + 1 :]


def _insert(draw: st.DrawFn, text: str) -> str:
    i = _pos(draw, text)
    piece = draw(st.one_of(st.sampled_from(INSERTS), st.text(max_size=4)))
    return text[:i] + piece + text[i:]


def _token_edit(draw: st.DrawFn, text: str) -> str:
    toks = _tokens(text)
    i, j = _pos(draw, toks), _pos(draw, toks)  # type: ignore[arg-type]
    how = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
    if how == "delete":
        del toks[i]
    elif how == "duplicate":
        toks.insert(i, toks[i])
    elif how == "swap":
        toks[i], toks[j] = toks[j], toks[i]
    else:
        toks[i] = toks[j]
    return "".join(toks)


MUTATIONS: list[Callable[[st.DrawFn, str], str]] = [
    _delete_chars,
    _duplicate_chars,
    _swap_chars,
    _insert,
    _token_edit,
]


def _load_or_arch_error(text: str) -> None:
    try:
        archdsl.loads(text, "<mutant>")
    except archdsl.ArchError as err:
        assert err.diagnostics, "ArchError without diagnostics"
        rendered = err.render()
        assert "Traceback" not in rendered


@fuzz(200)
@given(text=mutated_spec())
def test_mutated_specs_load_or_raise_arch_error(
    text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # imports in mutants resolve against an empty directory, never the repository
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())
    try:
        _load_or_arch_error(text)
    finally:
        os.chdir(cwd)


@fuzz(100)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_arbitrary_text_loads_or_raises_arch_error(text: str) -> None:
    _load_or_arch_error(text)


# ---------------------------------------------------------------- (c) pathological inputs

BASE = """arch t(d_model = 64, heads = 4, layers = 2, vocab = 100{extra})
mixer attn = attention(causal)
block layer(x) {{
  return x + attn({body})
}}
model = causal_lm(vocab) {{ repeat(layers) layer }}
"""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (rather than hang the suite) when loading takes longer than `seconds`."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"loading took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


PATHOLOGICAL = {
    "empty_text": "",
    "comment_only": "# nothing here\n",
    "zero_to_negative_power": BASE.format(extra=", a = 0 ** -1", body="x"),
    "tower_of_powers": BASE.format(extra=", a = 9 ** 9 ** 9", body="x"),
    "huge_literal_as_float": BASE.format(extra=", a = 1" + "0" * 400, body="x").replace(
        "attention(causal)", "attention(causal, rope_base = a)"
    ),
    "literal_over_4300_digits": BASE.format(extra=", a = " + "7" * 5000, body="x"),
    "deeply_nested_calls": BASE.format(extra="", body="rmsnorm(" * 500 + "x" + ")" * 500),
    "deeply_nested_minus": BASE.format(extra="", body="-" * 2000 + "x"),
    "deeply_nested_parens": BASE.format(extra="", body="(" * 2000 + "x" + ")" * 2000),
    "long_sum": BASE.format(extra="", body=" + ".join(["x"] * 2000)),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_inputs_give_a_result_or_arch_error(name: str) -> None:
    with time_limit(5):
        _load_or_arch_error(PATHOLOGICAL[name])
