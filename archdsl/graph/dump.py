"""Text dump of the per-block graphs (`--emit=graph`): nodes with shapes, then edges."""

from __future__ import annotations

from archdsl.graph.build import block_graph
from archdsl.ir.spec import Arch


def dump_graphs(arch: Arch) -> str:
    out: list[str] = []
    for block in arch.blocks:
        g = block_graph(arch, block)
        out.append(f"block {block.name}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges")
        for nid, d in g.nodes(data=True):
            binds = f"  -> {', '.join(d['binds'])}" if d.get("binds") else ""
            out.append(f"  {nid:<5} {d['kind']:<7} {d['label']:<12} {d['shape']}{binds}")
        for u, v, d in sorted(
            g.edges(data=True), key=lambda e: (int(e[1][1:]), e[2].get("arg", 0))
        ):
            out.append(f"  {u} -> {v} (arg {d.get('arg', 0)})")
    return "\n".join(out) + "\n"
