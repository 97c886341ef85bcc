"""IR -> networkx: one DiGraph per block (a derived view, never a second source of truth).

Nodes are the block's inputs, every call and arithmetic operation, constants and the
output; edges carry dataflow. Each node has a symbolic shape ``(B, T, width)`` where
width is a number and, when it equals a named dimension, that name (``d_model``).
Shape errors are raised here, with the location of the offending expression.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx

from archdsl import vocab
from archdsl.errors import ArchError
from archdsl.ir.base import Loc
from archdsl.ir.expr import BinOp, Call, Expr, Name, Neg, Num, Str
from archdsl.ir.spec import Arch, Assign, Block, Return


@dataclass(frozen=True)
class Width:
    """The last dimension of a value; ``scalar`` for constants that broadcast."""

    size: int
    scalar: bool = False

    def show(self, arch: Arch) -> str:
        if self.scalar:
            return "scalar"
        if self.size == arch.d_model:
            return "d_model"
        return str(self.size)


def shape_text(arch: Arch, width: Width) -> str:
    return "scalar" if width.scalar else f"[B, T, {width.show(arch)}]"


class _BlockGraphBuilder:
    def __init__(self, arch: Arch, block: Block) -> None:
        self.arch = arch
        self.block = block
        self.g: nx.MultiDiGraph = nx.MultiDiGraph(name=block.name)
        self.ids = itertools.count()
        self.env: dict[str, str] = {}

    def node(self, kind: str, label: str, width: Width, loc: Loc | None, **attrs: object) -> str:
        nid = f"n{next(self.ids)}"
        self.g.add_node(
            nid,
            kind=kind,
            label=label,
            width=width,
            loc=loc,
            shape=shape_text(self.arch, width),
            **attrs,
        )
        return nid

    def width(self, nid: str) -> Width:
        w = self.g.nodes[nid]["width"]
        assert isinstance(w, Width)
        return w

    def build(self) -> nx.MultiDiGraph:
        d = self.arch.d_model
        for p in self.block.params:
            self.env[p] = self.node("input", p, Width(d), self.block.loc, var=p)
        for stmt in self.block.body:
            nid = self.expr(stmt.value)
            if isinstance(stmt, Assign):
                self.g.nodes[nid].setdefault("binds", []).append(stmt.target)
                self.env[stmt.target] = nid
            elif isinstance(stmt, Return):
                out = self.node("output", "return", self.width(nid), stmt.loc)
                self.g.add_edge(nid, out, arg=0)
                w = self.width(nid)
                if w.scalar or w.size != d:
                    raise ArchError(
                        f"block `{self.block.name}` returns {shape_text(self.arch, w)}, "
                        f"but blocks map [B, T, d_model] to [B, T, d_model] (d_model = {d})",
                        stmt.value.loc,
                        f"project back with `linear(..., out = {d})`",
                    )
        return self.g

    def expr(self, e: Expr) -> str:
        if isinstance(e, Name):
            return self.env[e.name]
        if isinstance(e, Str):
            raise ArchError(
                "a string has no meaning in a block's dataflow", e.loc, "use a number or a tensor"
            )
        if isinstance(e, Num):
            return self.node("const", str(e.value), Width(1, scalar=True), e.loc, value=e.value)
        if isinstance(e, Neg):
            src = self.expr(e.operand)
            nid = self.node("unary", "neg", self.width(src), e.loc, op="neg")
            self.g.add_edge(src, nid, arg=0)
            return nid
        if isinstance(e, BinOp):
            return self.binop(e)
        assert isinstance(e, Call)
        return self.call(e)

    def binop(self, e: BinOp) -> str:
        lhs, rhs = self.expr(e.lhs), self.expr(e.rhs)
        wl, wr = self.width(lhs), self.width(rhs)
        if not wl.scalar and not wr.scalar and wl.size != wr.size:
            raise ArchError(
                f"shape mismatch in `{e.op}`: "
                f"{shape_text(self.arch, wl)} vs {shape_text(self.arch, wr)}",
                e.loc,
                "both sides of an elementwise operation need the same width",
            )
        width = wr if wl.scalar else wl
        nid = self.node("binop", e.op, width, e.loc, op=e.op)
        self.g.add_edge(lhs, nid, arg=0)
        self.g.add_edge(rhs, nid, arg=1)
        return nid

    def recall(self, e: Call) -> str:
        memory = e.args[0]
        assert isinstance(memory, Name)
        src = self.expr(e.args[1])
        w = self.width(src)
        if w.scalar or w.size != self.arch.d_model:
            raise ArchError(
                f"`recall` takes [B, T, d_model] (d_model = {self.arch.d_model}), "
                f"got {shape_text(self.arch, w)}",
                e.args[1].loc,
            )
        nid = self.node(
            "recall",
            f"recall {memory.name}",
            Width(self.arch.d_model),
            e.loc,
            op=memory.name,
            call=e,
        )
        self.g.add_edge(src, nid, arg=0)
        return nid

    def call(self, e: Call) -> str:
        if e.func == vocab.RECALL:
            return self.recall(e)
        args = [self.expr(a) for a in e.args]
        widths = [self.width(a) for a in args]
        d = self.arch.d_model
        if self.arch.mixer(e.func) is not None or self.arch.block(e.func) is not None:
            kind = "mixer" if self.arch.mixer(e.func) is not None else "block"
            for a, w in zip(e.args, widths):
                if w.scalar or w.size != d:
                    raise ArchError(
                        f"{kind} `{e.func}` takes [B, T, d_model] (d_model = {d}), "
                        f"got {shape_text(self.arch, w)}",
                        a.loc,
                    )
            width = Width(d)
        else:
            op = vocab.BLOCK_OPS[e.func]
            for a, w in zip(e.args, widths):
                if w.scalar:
                    raise ArchError(f"`{e.func}` takes a sequence, not a constant", a.loc)
            width = widths[0]
            if op.width == "out":
                out = e.kwarg("out")
                width = Width(int(out.value)) if isinstance(out, Num) else Width(d)
            kind = "op"
        nid = self.node(kind, e.func, width, e.loc, op=e.func, call=e)
        for i, src in enumerate(args):
            self.g.add_edge(src, nid, arg=i)
        return nid


def block_graph(arch: Arch, block: Block) -> nx.MultiDiGraph:
    """The dataflow DiGraph of `block` with symbolic shapes (raises on shape errors)."""
    return _BlockGraphBuilder(arch, block).build()


def call_graph(arch: Arch) -> nx.DiGraph:
    """Which block or model uses which block / mixer: nodes are declaration names."""
    g: nx.DiGraph = nx.DiGraph()
    g.add_node("<model>")
    for m in arch.mixers:
        g.add_node(m.name, kind="mixer")
    for b in arch.blocks:
        g.add_node(b.name, kind="block")
        for stmt in b.body:
            for call in calls_in(stmt.value):
                target = call.func
                if target == vocab.RECALL and isinstance(call.args[0], Name):
                    target = call.args[0].name
                if arch.mixer(target) is not None or arch.block(target) is not None:
                    g.add_edge(b.name, target, loc=call.loc)
    if arch.model is not None:
        for name in stage_blocks(arch.model.stages):
            g.add_edge("<model>", name)
    return g


def calls_in(e: Expr) -> list[Call]:
    if isinstance(e, Call):
        out = [e]
        args = e.args[1:] if e.func == vocab.RECALL else e.args
        for a in args:
            out.extend(calls_in(a))
        return out
    if isinstance(e, BinOp):
        return calls_in(e.lhs) + calls_in(e.rhs)
    if isinstance(e, Neg):
        return calls_in(e.operand)
    return []


def stage_blocks(stages: tuple[object, ...]) -> list[str]:
    from archdsl.ir.spec import BlockRef, Repeat

    out: list[str] = []
    for s in stages:
        if isinstance(s, BlockRef):
            out.append(s.block)
        elif isinstance(s, Repeat):
            out.extend(stage_blocks(s.body))
    return out
