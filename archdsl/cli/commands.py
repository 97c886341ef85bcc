"""The commands behind `archdsl check | compile | info | bench`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from archdsl.errors import ArchError
from archdsl.frontend.evaluate import Value


def cmd_check(files: list[str]) -> int:
    """Check every file; print all errors; exit 1 if any file fails."""
    from archdsl.spec import load

    failed = 0
    for f in files:
        try:
            spec = load(f)
        except ArchError as err:
            print(err.render(), file=sys.stderr)
            failed += 1
            continue
        n_mixers, n_blocks = len(spec.ir.mixers), len(spec.ir.blocks)
        print(f"{f}: ok ({spec.name}: {n_mixers} mixer(s), {n_blocks} block(s))")
    if len(files) > 1:
        print(
            f"{len(files) - failed} ok, {failed} failed", file=sys.stderr if failed else sys.stdout
        )
    return 1 if failed else 0


def _emit(stage: str, path: str, backend: str, overrides: dict[str, Value]) -> str:
    from archdsl.spec import load

    if stage == "ast":
        import pprint

        from archdsl.frontend.load import load_sources

        return pprint.pformat(load_sources(path=path).root, width=110) + "\n"
    spec = load(path, **overrides)
    if stage == "ir":
        import json

        from archdsl.codegen.torch_module import _without_locs

        return (
            json.dumps(_without_locs(spec.ir.model_dump(mode="json")), indent=2, sort_keys=True)
            + "\n"
        )
    if stage == "graph":
        from archdsl.graph.dump import dump_graphs

        return dump_graphs(spec.ir)
    if stage == "plan":
        from archdsl.lower.plan import dump_plan, lower

        return dump_plan(lower(spec.ir, spec.ir_hash(), backend))
    from archdsl.api import compile_spec

    compiled = compile_spec(spec, backend)
    if stage == "torch":
        return compiled.files["model.py"]
    if "kernels_triton.py" not in compiled.files:
        raise ArchError("no Triton kernels for this spec/backend", None, "use `--backend triton`")
    return compiled.files["kernels_triton.py"]


def cmd_compile(
    path: str, output: str | None, backend: str, emit: str | None, overrides: dict[str, Value]
) -> int:
    if emit is not None:
        sys.stdout.write(_emit(emit, path, backend, overrides))
        return 0
    from archdsl.api import compile_spec
    from archdsl.codegen.package import package_files, write_package

    compiled = compile_spec(path, backend, **overrides)
    out_dir = Path(output) if output else Path("build") / compiled.spec.name
    files = package_files(compiled)
    write_package(files, out_dir)
    print(f"compiled {path} -> {out_dir}/ (ir {compiled.spec.ir_hash()}, backend {backend})")
    for name in sorted(files):
        print(f"  {name:<20} {len(files[name].encode()):>8} bytes")
    for m in compiled.plan.mixers:
        note = "  [fallback: reference]" if m.fallback else ""
        kernel = f"  (triton: {m.triton_kernel})" if m.triton_kernel else ""
        print(f"  {m.kind} {m.name}: {m.algorithm}{kernel}{note}")
    return 0


def cmd_info(path: str, context: int, overrides: dict[str, Value]) -> int:
    from archdsl.info import spec_info

    sys.stdout.write(spec_info(path, context, overrides))
    return 0


def cmd_bench(files: list[str], forward: bool) -> int:
    from archdsl.api import _CACHE, compile_spec
    from archdsl.spec import load

    print(
        f"{'spec':<28} {'parse+check ms':>15} {'codegen ms':>11}"
        + (f" {'forward ms':>11}" if forward else "")
    )
    for f in files:
        t0 = time.perf_counter()
        spec = load(f)
        t1 = time.perf_counter()
        _CACHE.clear()
        compile_spec(spec)
        t2 = time.perf_counter()
        row = f"{Path(f).name:<28} {1e3 * (t1 - t0):>15.1f} {1e3 * (t2 - t1):>11.1f}"
        if forward:
            row += f" {_forward_ms(f):>11.1f}"
        print(row)
    return 0


def _forward_ms(path: str) -> float:
    import torch

    from archdsl.api import build

    model = build(path, d_model=64, layers=2, heads=4)
    arch = getattr(model, "arch", None)
    vocab = int(arch.param("vocab")) if arch is not None else 100
    ids = torch.randint(0, vocab, (1, 128))
    with torch.no_grad():
        model(ids)
        t0 = time.perf_counter()
        model(ids)
    return 1e3 * (time.perf_counter() - t0)
