"""The `triton` backend end to end: compiled specs run their generated kernels.

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1). The generated kernels compute in float32, so the comparison with
the torch backend is at float32 tolerance.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.codegen.package import package_files, write_package

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(d_model=32, heads=2, layers=1, vocab=20)


def _pair(spec: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fast = archdsl.build(ROOT / "specs" / spec, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tri = archdsl.build(ROOT / "specs" / spec, backend="triton", **SMALL)
    tri.load_state_dict(fast.state_dict())
    return fast, tri


@pytest.mark.parametrize(
    "spec",
    ["transformer.arch", "gla.arch", "retnet.arch", "titans_mal.arch", "linear_attention.arch"],
)
def test_triton_backend_matches_torch(spec: str) -> None:
    fast, tri = _pair(spec)
    ids = torch.randint(0, 20, (2, 37))
    out_fast, out_tri = fast(ids), tri(ids)
    torch.testing.assert_close(out_tri, out_fast, rtol=1e-4, atol=1e-4)
    out_fast.square().sum().backward()
    out_tri.square().sum().backward()
    tri_params = dict(tri.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(tri_params[name].grad, p.grad, rtol=2e-3, atol=2e-4, msg=name)


def test_plan_names_the_generated_kernels() -> None:
    compiled = archdsl.compile_spec(ROOT / "specs" / "titans_mal.arch", backend="triton")
    kernels = {m.name: m.triton_kernel for m in compiled.plan.mixers}
    assert kernels == {"memory": None, "swa": "attention_swa"}
    source = compiled.files["kernels_triton.py"]
    assert "@triton.jit" in source and "WINDOW: tl.constexpr" in source
    assert "titans_mal: mixer swa" in source
    gla = archdsl.compile_spec(ROOT / "specs" / "gla.arch", backend="triton")
    assert "DECAY_PER_CHANNEL" in gla.files["kernels_triton.py"]


def test_compiled_package_runs_its_own_kernel_file(tmp_path: Path) -> None:
    compiled = archdsl.compile_spec(ROOT / "specs" / "retnet.arch", backend="triton", **SMALL)
    write_package(package_files(compiled), tmp_path / "retnet_pkg")
    sys.path.insert(0, str(tmp_path))
    try:
        import retnet_pkg  # type: ignore[import-not-found]

        model = retnet_pkg.build()
        assert retnet_pkg.MANIFEST["backend"] == "triton"
        assert model(torch.randint(0, 20, (1, 9))).shape == (1, 9, 20)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("retnet_pkg", None)
