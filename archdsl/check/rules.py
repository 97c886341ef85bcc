"""The checker: small named rules over the IR and its graphs, one per error class.

Each rule takes the architecture and returns diagnostics (empty when it holds). Rules
run in order; `check_arch` collects everything and raises one `ArchError`.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from archdsl import vocab
from archdsl.errors import ArchError, Diagnostic
from archdsl.frontend.evaluate import names_in
from archdsl.graph.build import block_graph, call_graph, calls_in
from archdsl.ir.base import Loc
from archdsl.ir.expr import Call, Name, Num
from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Arch, Assign, Block, Mixer

Rule = Callable[[Arch], list[Diagnostic]]
IDENTIFIER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def is_identifier(name: str) -> bool:
    """Letters, digits and `_`, not starting with a digit. (Python keywords are fine:
    generated code always affixes spec names, e.g. `Block_class`, `class_3`.)"""
    return bool(name) and set(name) <= IDENTIFIER_CHARS and not name[0].isdigit()


def rule_identifiers(arch: Arch) -> list[Diagnostic]:
    """Names from a spec reach generated Python: only plain identifiers are allowed.

    The grammar guarantees it for text specs; this guards IR built in Python."""
    names: list[tuple[str, Loc | None]] = [(arch.name, arch.loc)]
    names += [(p.name, p.loc) for p in arch.params]
    names += [(m.name, m.loc) for m in arch.mixers]
    for b in arch.blocks:
        names.append((b.name, b.loc))
        names += [(p, b.loc) for p in b.params]
        names += [(s.target, s.loc) for s in b.body if isinstance(s, Assign)]
    return [
        Diagnostic(
            f"{name!r} is not a valid name",
            loc,
            "names are letters, digits and `_`, not starting with a digit",
        )
        for name, loc in names
        if not is_identifier(name)
    ]


def rule_conventional_params(arch: Arch) -> list[Diagnostic]:
    missing = [p for p in ("d_model", "heads") if p not in {q.name for q in arch.params}]
    if not missing or arch.model is None and not arch.mixers and not arch.blocks:
        return []
    return [
        Diagnostic(
            f"the `arch` header must declare {', '.join(f'`{m}`' for m in missing)}",
            arch.loc,
            "every spec uses the conventional names d_model, layers, heads, vocab",
        )
    ]


def rule_block_cycles(arch: Arch) -> list[Diagnostic]:
    g = call_graph(arch)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return []
    names = [u for u, _ in cycle] + [cycle[0][0]]
    loc = g.edges[cycle[-1]].get("loc")
    return [
        Diagnostic(
            f"blocks call each other in a cycle: {' -> '.join(names)}",
            loc,
            "a block cannot use itself, even indirectly",
        )
    ]


def rule_shapes(arch: Arch) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for block in arch.blocks:
        try:
            block_graph(arch, block)
        except ArchError as err:
            out.extend(err.diagnostics)
    return out


def rule_unused_bindings(arch: Arch) -> list[Diagnostic]:
    """Every assignment is read before it is overwritten; every block input is read."""
    out: list[Diagnostic] = []
    for block in arch.blocks:
        for stmt in _unread_assignments(block):
            out.append(
                Diagnostic(
                    f"`{stmt.target}` is assigned but never used in block `{block.name}`",
                    stmt.loc,
                    "remove it, or use it in a later statement",
                )
            )
        read = set().union(*(names_in(s.value) for s in block.body))
        for p in block.params:
            if p not in read:
                out.append(
                    Diagnostic(f"input `{p}` of block `{block.name}` is never used", block.loc)
                )
    return out


def _unread_assignments(block: Block) -> list[Assign]:
    """Assignments whose value is not read before the name is assigned again (or ever)."""
    unread = []
    for i, stmt in enumerate(block.body):
        if not isinstance(stmt, Assign):
            continue
        for later in block.body[i + 1 :]:
            if stmt.target in names_in(later.value):
                break
            if isinstance(later, Assign) and later.target == stmt.target:
                unread.append(stmt)
                break
        else:
            unread.append(stmt)
    return unread


def rule_unused_declarations(arch: Arch) -> list[Diagnostic]:
    if arch.model is None:
        return []
    g = call_graph(arch)
    reachable = nx.descendants(g, "<model>")
    root = arch.loc.file if arch.loc is not None else None

    def local(node: object) -> bool:  # imported declarations may go unused
        loc = getattr(node, "loc", None)
        return root is None or loc is None or loc.file == root

    out = []
    for m in arch.mixers:
        if m.name not in reachable and local(m):
            out.append(
                Diagnostic(
                    f"{_kind(m)} `{m.name}` is declared but never used",
                    m.loc,
                    "use it in a block, or remove it",
                )
            )
    for b in arch.blocks:
        if b.name not in reachable and local(b):
            out.append(
                Diagnostic(
                    f"block `{b.name}` is declared but never used",
                    b.loc,
                    "add it to the model, or remove it",
                )
            )
    return out


def _kind(m: Mixer) -> str:
    return "memory" if isinstance(m, Memory) else "mixer"


def is_bidirectional(m: Mixer) -> bool:
    if isinstance(m, Attention):
        return not m.causal
    if isinstance(m, MatrixMixer):
        return m.direction == "bidirectional"
    if isinstance(m, Conv):
        return not m.causal
    return False


def rule_causality(arch: Arch) -> list[Diagnostic]:
    """A mixer that sees the future inside a causal LM would leak targets into inputs."""
    if arch.model is None or arch.model.head.kind not in vocab.CAUSAL_HEADS:
        return []
    g = call_graph(arch)
    reachable = nx.descendants(g, "<model>")
    out = []
    for block in arch.blocks:
        if block.name not in reachable:
            continue
        for stmt in block.body:
            for call in calls_in(stmt.value):
                m = arch.mixer(call.func)
                leaky = m is not None and is_bidirectional(m)
                leaky_op = call.func == "shortconv" and _kwarg_false(call, "causal")
                if leaky or leaky_op:
                    what = (
                        f"{_kind(m)} `{call.func}`"
                        if m is not None
                        else "`shortconv(causal = false)`"
                    )
                    out.append(
                        Diagnostic(
                            f"{what} sees future tokens, but the model is a causal LM",
                            call.loc,
                            "use a causal mixer here, "
                            "or a `masked_lm` / `classifier` / `encoder` head",
                        )
                    )
    return out


def _kwarg_false(call: object, name: str) -> bool:
    value = call.kwarg(name)  # type: ignore[attr-defined]
    return isinstance(value, Num) and value.value is False


def rule_memory_combinations(arch: Arch) -> list[Diagnostic]:
    """Combinations of the four Miras choices that have no defined meaning."""
    out = []
    for m in arch.mixers:
        if not isinstance(m, Memory):
            continue
        if m.learner.kind == "implicit" and not (
            m.structure.kind == "matrix" and m.bias.kind == "l2"
        ):
            out.append(
                Diagnostic(
                    "the `implicit` learner is Longhorn's closed form, "
                    "defined for a matrix memory with the l2 bias",
                    m.learner.loc,
                    "use `structure = matrix` and `bias = l2`, or `learner = gd`",
                )
            )
        if m.retention.tie_key and not (
            m.retention.kind == "decay"
            and m.retention.alpha is not None
            and m.retention.alpha.per == "channel"
        ):
            out.append(
                Diagnostic(
                    "`tie_key` (key = 1 - alpha, HGRN2) needs a per-channel decay",
                    m.retention.loc,
                    "write `retention = decay(alpha = data(per = channel), tie_key = true)`",
                )
            )
        if m.structure.kind == "mlp":
            for what, gate in (
                ("lr", m.learner.lr),
                ("momentum", m.learner.beta),
                ("alpha", m.retention.alpha),
            ):
                if gate is not None and gate.per == "channel":
                    out.append(
                        Diagnostic(
                            f"a per-channel {what} has no meaning for an mlp memory",
                            gate.loc,
                            "give mlp memories per-head rates: drop `per = channel`",
                        )
                    )
        if m.bias.delta is not None and m.bias.delta.per == "channel":
            out.append(
                Diagnostic(
                    "the Huber threshold `delta` is one value per head",
                    m.bias.delta.loc,
                    "drop `per = channel`",
                )
            )
        f = m.features
        if m.structure.kind == "vector" and f.dk is not None and f.dv is not None and f.dk != f.dv:
            out.append(Diagnostic("a vector memory needs dk == dv", f.loc))
        if f.normalizer and (m.structure.kind != "matrix" or m.bias.kind != "dot"):
            out.append(
                Diagnostic(
                    "`normalizer` divides by the memory's read of a constant value, which "
                    "is a denominator only for a matrix memory with the dot bias "
                    "(linear attention and its gated forms)",
                    f.loc,
                    "drop `normalizer = true`, or use `structure = matrix` and `bias = dot`",
                )
            )
        if m.bias.kind == "lp" and m.bias.p < 1:
            out.append(Diagnostic("lp needs p >= 1", m.bias.loc))
    return out


def uses_complex_modes(m: MatrixMixer) -> bool:
    """Whether a matrix mixer's fixed parameters are an S4 / S4D kernel (complex modes)."""
    if m.data and m.cls in ("vandermonde", "cauchy"):
        return False
    return m.cls in ("vandermonde", "cauchy") or (m.cls == "toeplitz" and m.kernel in ("s4", "s4d"))


def rule_mixer_dims(arch: Arch) -> list[Diagnostic]:
    out = []
    d = arch.d_model
    for m in arch.mixers:
        if isinstance(m, Attention) and m.heads is not None and d % m.heads:
            out.append(
                Diagnostic(f"attention heads = {m.heads} does not divide d_model = {d}", m.loc)
            )
        if (
            isinstance(m, Attention)
            and m.kv_heads is not None
            and (m.heads or arch.heads) % m.kv_heads
        ):
            out.append(
                Diagnostic(
                    f"kv_heads = {m.kv_heads} does not divide the number of query heads", m.loc
                )
            )
        if isinstance(m, MatrixMixer):
            inner = int(m.expand * d)
            if inner % m.headdim:
                out.append(
                    Diagnostic(
                        f"headdim = {m.headdim} does not divide the inner width "
                        f"expand * d_model = {inner}",
                        m.loc,
                        "choose headdim among its divisors",
                    )
                )
            if m.kernel == "selective" and (m.cls != "semiseparable" or m.direction != "causal"):
                out.append(
                    Diagnostic(
                        "`kernel = selective` is Mamba's causal selective scan: "
                        "a causal semiseparable mixer",
                        m.loc,
                        "for a bidirectional SSM use "
                        "`matrix(quasiseparable, bidirectional)` (Hydra)",
                    )
                )
            if uses_complex_modes(m) and (m.state < 2 or m.state % 2):
                out.append(
                    Diagnostic(
                        f"state = {m.state}: a fixed S4 / S4D kernel holds its state as "
                        "state / 2 complex conjugate pairs, so state must be even",
                        m.loc,
                        f"use state = {max(2, m.state + 1)} (S4's N counts real dimensions)",
                    )
                )
            if m.cls == "dense" and m.max_len < 1:
                out.append(Diagnostic("a dense mixer needs `max_len` (its matrix is T x T)", m.loc))
        if isinstance(m, Memory):
            dk = m.features.dk or d // arch.heads
            if m.features.dk is None and d % arch.heads:
                out.append(
                    Diagnostic("heads must divide d_model for the memory's head size", m.loc)
                )
            del dk
    return out


def rule_segments(arch: Arch) -> list[Diagnostic]:
    """`recall` and attention over context tokens only make sense segment by segment,
    and a segment must end on a memory mini-batch boundary (the state `recall` reads)."""
    out: list[Diagnostic] = []
    for block in arch.blocks:
        for stmt in block.body:
            for call in calls_in(stmt.value):
                out.extend(_segment_call(arch, block, call))
    return out


def _segment_call(arch: Arch, block: Block, call: Call) -> list[Diagnostic]:
    if call.func == vocab.RECALL:
        if not block.segment:
            return [
                Diagnostic(
                    "`recall` reads a memory before the current segment, "
                    "but the block has no segments",
                    call.loc,
                    f"write `block {block.name}(...) segment(n) {{`",
                )
            ]
        mem = arch.mixer(call.args[0].name) if isinstance(call.args[0], Name) else None
        if not isinstance(mem, Memory):
            return [Diagnostic("`recall` needs a memory", call.loc)]
        if block.segment % mem.batch:
            return [
                Diagnostic(
                    f"segment({block.segment}) is not a multiple of "
                    f"memory `{mem.name}`'s batch {mem.batch}",
                    block.loc,
                    "segments must end on mini-batch boundaries",
                )
            ]
        if mem.features.persistent % mem.batch:
            return [
                Diagnostic(
                    f"memory `{mem.name}`'s {mem.features.persistent} persistent tokens "
                    f"shift its mini-batches (batch {mem.batch}) off the segment boundaries "
                    "that `recall` reads at",
                    call.loc,
                    "drop the memory's `persistent`, or make it a multiple of its batch",
                )
            ]
        return []
    m = arch.mixer(call.func)
    if m is None or len(call.args) < 2:
        return []
    if not isinstance(m, Attention):
        return [
            Diagnostic(
                f"only attention takes context tokens; `{call.func}` takes one input", call.loc
            )
        ]
    if not _context_from_recall(arch, block, call):
        return [
            Diagnostic(
                "attention context tokens must come from `recall(...)` in a segmented block",
                call.args[1].loc,
                "every query of a segment sees all context tokens, "
                "so they may not depend on the segment itself",
            )
        ]
    return []


def _context_from_recall(arch: Arch, block: Block, call: Call) -> bool:
    if not block.segment:
        return False
    g = block_graph(arch, block)
    for nid, data in g.nodes(data=True):
        if data.get("call") is not call:
            continue
        sources = [u for u, _, d in g.in_edges(nid, data=True) if d.get("arg") == 1]
        return all(g.nodes[u]["kind"] == "recall" for u in sources)
    return False


RULES: tuple[Rule, ...] = (
    rule_identifiers,
    rule_conventional_params,
    rule_block_cycles,
    rule_shapes,
    rule_unused_bindings,
    rule_unused_declarations,
    rule_causality,
    rule_segments,
    rule_memory_combinations,
    rule_mixer_dims,
)


def check_arch(arch: Arch) -> None:
    """Run every rule; raise one ArchError with all diagnostics, in source order."""
    diags: list[Diagnostic] = []
    names = {p.name for p in arch.params}
    has_dims = {"d_model", "heads"} <= names
    for rule in RULES:
        diags.extend(rule(arch))
        if rule in (rule_identifiers, rule_conventional_params, rule_block_cycles) and diags:
            break  # later rules assume valid names, the conventional dims, an acyclic call graph
        if rule is rule_conventional_params and not has_dims:
            break  # nothing declared that would need them (an empty or parameter-only spec)
    if diags:
        diags.sort(key=lambda d: (d.loc.file, d.loc.line, d.loc.column) if d.loc else ("", 0, 0))
        raise ArchError(diagnostics=diags)
