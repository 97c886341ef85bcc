"""Front-end speed: in-process parse + check + codegen per spec, and `archdsl check` wall time.

Targets (issue 2): under 50 ms per spec in process; `archdsl check specs/*.arch` under
1 s from the shell (check imports neither torch nor triton). Prints a table; no asserts.
Run: python bench/bench_frontend.py
"""

from __future__ import annotations

import glob
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _median_ms(fn, repeats: int = 7) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _time_spec(path: str) -> tuple[float, float, float]:
    """Median ms of: parsing (with imports), resolve + check, lower + torch codegen."""
    from archdsl.check.rules import check_arch
    from archdsl.codegen.torch_module import emit_torch_module
    from archdsl.frontend.load import load_sources
    from archdsl.frontend.resolve import resolve
    from archdsl.lower.plan import lower
    from archdsl.spec import ir_hash

    parse = _median_ms(lambda: load_sources(path=path))
    sources = load_sources(path=path)
    rc = _median_ms(lambda: check_arch(resolve(sources)))
    arch = resolve(sources)

    def codegen() -> None:
        h = ir_hash(arch)
        lower(arch, h)
        emit_torch_module(arch, h, Path(path).name)

    return parse, rc, _median_ms(codegen)


def main() -> None:
    from archdsl.frontend.load import load_sources

    specs = sorted(glob.glob(str(ROOT / "specs" / "*.arch")))
    load_sources(path=specs[0])  # build the LALR tables once (cached for the process)
    print(f"{'spec':<26} {'parse ms':>9} {'resolve+check ms':>17} ", end="")
    print(f"{'lower+codegen ms':>17} {'total ms':>9}")
    totals = []
    for path in specs:
        parse, rc, cg = _time_spec(path)
        total = parse + rc + cg
        totals.append(total)
        print(f"{Path(path).name:<26} {parse:>9.2f} {rc:>17.2f} {cg:>17.2f} {total:>9.2f}")
    print(f"{'max':<26} {'':>9} {'':>17} {'':>17} {max(totals):>9.2f}")
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        done = subprocess.run(
            ["archdsl", "check", *specs], capture_output=True, text=True, cwd=ROOT
        )
        walls.append(time.perf_counter() - t0)
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    print(
        f"\n`archdsl check specs/*.arch` ({len(specs)} files, {status}): "
        f"median {statistics.median(walls):.3f} s, min {min(walls):.3f} s over {len(walls)} runs"
    )
    probe = (
        "import sys, archdsl.cli.commands as c; c.cmd_check([]);"
        "print('torch' in sys.modules, 'triton' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    print(
        f"check imports torch: {out[0] if out else '?'}, triton: {out[1] if len(out) > 1 else '?'}"
    )


if __name__ == "__main__":
    main()
