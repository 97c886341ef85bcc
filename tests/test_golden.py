"""Golden dumps of every spec: IR, plan and generated torch source.

A change in compiler output shows as a diff here. Regenerate with
`pytest tests/test_golden.py --update-golden` and review the diff before committing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from archdsl.cli.commands import _emit

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))
GOLDEN = ROOT / "tests" / "golden"
STAGES = {"ir": "ir.json", "plan": "plan.txt", "torch": "model.py", "graph": "graph.txt"}


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_golden(
    spec: Path, stage: str, update_golden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    text = _emit(stage, f"specs/{spec.name}", "torch", {})
    golden = GOLDEN / spec.stem / STAGES[stage]
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run pytest with --update-golden"
    assert text == golden.read_text(), (
        f"{spec.name} {stage} output changed; review, then --update-golden"
    )


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_codegen_is_deterministic(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    from archdsl.api import _CACHE

    first = _emit("torch", f"specs/{spec.name}", "torch", {})
    _CACHE.clear()
    assert _emit("torch", f"specs/{spec.name}", "torch", {}) == first
