"""`archdsl graph`: every spec draws as DOT and as a well-formed SVG naming its blocks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import archdsl
from archdsl.cli.main import main
from archdsl.graph.render import to_dot, to_svg

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_spec_draws(spec: Path) -> None:
    arch = archdsl.load(spec).ir
    svg = to_svg(arch)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for block in arch.blocks:
        assert f"block {block.name}" in texts
    for mixer in arch.mixers:
        if any(mixer.name in str(s.value) for b in arch.blocks for s in b.body):
            assert mixer.name in texts
    dot = to_dot(arch)
    assert dot.startswith("digraph") and dot.count("{") == dot.count("}")


def test_graph_command_writes_files_and_refuses_bad_suffix(tmp_path: Path) -> None:
    assert (
        main(["graph", str(ROOT / "specs" / "titans_mac.arch"), "-o", str(tmp_path / "g.svg")]) == 0
    )
    assert "segment(512)" in (tmp_path / "g.svg").read_text()
    assert main(["graph", str(ROOT / "specs" / "hydra.arch"), "-o", str(tmp_path / "g.dot")]) == 0
    assert main(["graph", str(ROOT / "specs" / "hydra.arch"), "-o", str(tmp_path / "g.jpg")]) == 2
