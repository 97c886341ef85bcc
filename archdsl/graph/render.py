"""Pictures of a model: Graphviz DOT text, and a self-contained SVG (no external tools).

The picture shows the model's stage list (embedding, repeats, head) and, beside it, the
dataflow of every block with mixers highlighted. The SVG layout puts each node on the
layer of its longest path from the inputs.
"""

from __future__ import annotations

from html import escape

import networkx as nx

from archdsl.graph.build import block_graph
from archdsl.ir.spec import Arch, Block, BlockRef, Repeat, Stage

COLORS = {
    "input": "#dfe9f5",
    "output": "#dfe9f5",
    "mixer": "#f7c59f",
    "recall": "#f7dc9f",
    "block": "#c5e0b4",
    "op": "#ffffff",
    "binop": "#eeeeee",
    "unary": "#eeeeee",
    "const": "#f5f5f5",
}


ARROW = 'stroke="#555" marker-end="url(#arrow)"'
DASHED = 'stroke-dasharray="4 3"'
MIDDLE = 'text-anchor="middle"'


def _stage_lines(stages: tuple[Stage, ...], indent: int = 0) -> list[str]:
    out: list[str] = []
    for s in stages:
        if isinstance(s, BlockRef):
            out.append("  " * indent + s.block)
        elif isinstance(s, Repeat):
            out.append("  " * indent + f"repeat({s.n}{', shared' if s.shared else ''})")
            out.extend(_stage_lines(s.body, indent + 1))
    return out


def model_lines(arch: Arch) -> list[str]:
    if arch.model is None:
        return [f"{arch.name} (blocks only)"]
    head = arch.model.head
    return [
        f"embedding ({head.vocab} x {arch.d_model})",
        *_stage_lines(arch.model.stages),
        f"{head.kind} head",
    ]


def _dq(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _block_title(block: Block) -> str:
    return f"block {block.name}" + (f" segment({block.segment})" if block.segment else "")


def _dot_label(label: str) -> str:
    """A quoted DOT label whose `\\n` (from the label text) stays a DOT line break."""
    return _dq(label).replace("\\\\n", "\\n")


def to_dot(arch: Arch) -> str:
    lines = [
        f"digraph {_dq(arch.name)} {{",
        '  rankdir=TB; node [shape=box, style="rounded,filled", fontname=Helvetica];',
    ]
    lines.append('  subgraph "cluster_model" { label="model";')
    prev = None
    for i, text in enumerate(model_lines(arch)):
        nid = f"model_{i}"
        lines.append(f'    {nid} [label={_dq(text.strip())}, fillcolor="#dfe9f5"];')
        if prev:
            lines.append(f"    {prev} -> {nid};")
        prev = nid
    lines.append("  }")
    for block in arch.blocks:
        g = block_graph(arch, block)
        lines.append(
            f"  subgraph {_dq('cluster_' + block.name)} {{ label={_dq(_block_title(block))};"
        )
        for nid, d in g.nodes(data=True):
            label = f"{d['label']}\\n{d['shape']}" if d["kind"] != "const" else d["label"]
            lines.append(
                f"    {_dq(block.name + '_' + nid)} [label={_dot_label(label)}, "
                f"fillcolor={_dq(COLORS[d['kind']])}];"
            )
        for u, v, _ in g.edges(data=True):
            lines.append(f"    {_dq(block.name + '_' + u)} -> {_dq(block.name + '_' + v)};")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layers(g: nx.MultiDiGraph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        depth[n] = 1 + max((depth[p] for p in preds), default=-1)
    return depth


def to_svg(arch: Arch) -> str:
    box_w, box_h, gap_x, gap_y, margin = 180, 40, 50, 30, 20
    columns: list[
        tuple[str, list[tuple[str, str, str, int, int]], list[tuple[int, int, int, int]]]
    ] = []
    # model column
    items = []
    for i, text in enumerate(model_lines(arch)):
        items.append((text.strip(), "", "input", 0, i))
    edges = [(0, i, 0, i + 1) for i in range(len(items) - 1)]
    columns.append(("model", items, edges))
    for block in arch.blocks:
        g = block_graph(arch, block)
        depth = _layers(g)
        slot: dict[int, int] = {}
        pos: dict[str, tuple[int, int]] = {}
        nodes = []
        for nid, d in g.nodes(data=True):
            layer = depth[nid]
            x = slot.get(layer, 0)
            slot[layer] = x + 1
            pos[nid] = (x, layer)
            shape = "" if d["kind"] in ("const",) else d["shape"]
            nodes.append((str(d["label"]), shape, d["kind"], x, layer))
        block_edges = [
            (pos[u][0], pos[u][1], pos[v][0], pos[v][1]) for u, v, _ in g.edges(data=True)
        ]
        columns.append((_block_title(block), nodes, block_edges))
    parts: list[str] = []
    x0 = margin
    height = 0
    for title, nodes, col_edges in columns:
        width_slots = 1 + max((n[3] for n in nodes), default=0)
        parts.append(f'<text x="{x0}" y="{margin}" font-weight="bold">{escape(title)}</text>')

        def center(sx: int, sy: int, x0: int = x0) -> tuple[float, float]:
            return x0 + sx * (box_w + gap_x) + box_w / 2, margin + 15 + sy * (
                box_h + gap_y
            ) + box_h / 2

        for sx, sy, tx, ty in col_edges:
            (ax, ay), (bx, by) = center(sx, sy), center(tx, ty)
            y1, y2 = ay + box_h / 2, by - box_h / 2
            if ty - sy > 1 and sx == tx:  # a skip (residual) edge: bend it round the nodes between
                bend = ax + box_w / 2 + 25
                path = (
                    f"M {ax + box_w / 2:.0f} {ay:.0f} C {bend:.0f} {ay:.0f}, "
                    f"{bend:.0f} {by:.0f}, {bx + box_w / 2:.0f} {by:.0f}"
                )
                parts.append(f'<path d="{path}" fill="none" {DASHED} {ARROW}/>')
                continue
            parts.append(f'<line x1="{ax:.0f}" y1="{y1:.0f}" x2="{bx:.0f}" y2="{y2:.0f}" {ARROW}/>')
        for label, shape, kind, sx, sy in nodes:
            cx, cy = center(sx, sy)
            fill = COLORS.get(kind, "#ffffff")
            parts.append(
                f'<rect x="{cx - box_w / 2:.0f}" y="{cy - box_h / 2:.0f}" '
                f'width="{box_w}" height="{box_h}" rx="8" fill="{fill}" stroke="#333"/>'
            )
            parts.append(
                f'<text x="{cx:.0f}" y="{cy - 2:.0f}" {MIDDLE} font-size="13">'
                f"{escape(label[:28])}</text>"
            )
            if shape:
                parts.append(
                    f'<text x="{cx:.0f}" y="{cy + 13:.0f}" {MIDDLE} font-size="10" fill="#555">'
                    f"{escape(shape)}</text>"
                )
            height = max(height, int(cy + box_h))
        x0 += width_slots * (box_w + gap_x) + 2 * gap_x
    width = x0 + margin
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + margin}" '
        'font-family="Helvetica, Arial, sans-serif">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="6" markerHeight="6" orient="auto">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>'
        f'<rect width="100%" height="100%" fill="white"/>'
    )
    return head + "".join(parts) + "</svg>\n"
