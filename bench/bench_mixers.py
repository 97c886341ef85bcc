"""Matrix mixers: fast structured path vs multiplying by the materialised matrix (CPU, float32).

Prints a table (no asserts): for each class at T = 1024, 4096, 16384 (B=1, H=4, D=64,
state 64), the fast path's time, the time of ``M @ x`` with ``M`` already materialised
(the same for every class), their ratio, and the fast path's growth t(16384)/t(4096)
(``T log T`` would be about 4.7x, ``T`` 4x, ``T^2`` 16x). Then Hydra's one-scan
bidirectional mixer vs two separate causal semiseparable scans on x and flip(x), added.

The machine this runs on is shared and noisy: the fast path and ``M @ x`` are timed
alternately, ``reps`` times each; the times shown are medians and the ratio is the median
of the alternating pairs' ratios, so that a change of load moves both terms of a ratio.
``selective`` is Mamba's S6 scan (P = D = 64 channels per head, each with its own
decay): its materialised form would be one ``T x T`` matrix per channel (16 GB at
T = 4096), the same multiply-adds as the per-head ``M @ x``, which stands in.
The fixed S4D (vandermonde/fixed) and S4 (cauchy/fixed) kernels have state 64 as the
papers count it (S4's ``d_state``): 32 complex modes, each a conjugate pair.

    python bench/bench_mixers.py [--lengths 1024 4096 16384] [--reps 7] [--cases toeplitz ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from archdsl.mixers.ops import apply_matrix, flip_time
from archdsl.mixers.registry import implementation
from archdsl.mixers.ssd import chunked_ssd

B, H, D, N = 1, 4, 64, 64
MATERIALIZE_LIMIT_BYTES = 8 * 2**30
# Fast paths that are O(T^2) in time are not run where they would take minutes.
SKIP_FAST = {("cauchy/data", 16384): "O(T^2 N): ~70 G terms", ("dense", 16384): "4 GB weight"}


def _c(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.complex64)


def make_params(name: str, t: int) -> dict[str, object]:
    """Float32 parameters of one class/form at length t (causal)."""
    rnd = torch.randn
    if name == "dense":
        return {"weight": rnd(H, t, t) / math.sqrt(t)}
    if name in ("attention", "lowrank"):
        return {"q": rnd(B, t, H, N), "k": rnd(B, t, H, N)}
    if name == "toeplitz":
        return {"filter": rnd(H, t) / t}
    modes = N // 2  # S4 / S4D: state N held as N / 2 conjugate pairs
    if name == "vandermonde/fixed":
        im = math.pi * torch.arange(modes).float().expand(H, modes)
        a = torch.complex(-torch.rand(H, modes) - 0.1, im)
        return {
            "log_dt": torch.full((H,), math.log(0.01)),
            "a": a,
            "b": _c(H, modes),
            "c": _c(H, modes),
        }
    if name == "vandermonde/data":
        return {"c": rnd(B, t, H, N), "b": rnd(B, t, H, N), "log_z": -torch.rand(H, N) * 0.5}
    if name == "cauchy/fixed":
        im = math.pi * torch.arange(modes).float().expand(H, modes)
        lam = torch.complex(-0.5 * torch.ones(H, modes), im)
        return {
            "log_dt": torch.full((H,), math.log(0.01)),
            "lam": lam,
            "p": 0.1 * _c(H, modes),
            "b": _c(H, modes),
            "ct": _c(H, modes),
        }
    if name == "cauchy/data":
        return {"q": F.softplus(rnd(B, t, H, N)), "k": -F.softplus(rnd(B, t, H, N)), "c": 1.0}
    if name == "selective":
        a = -torch.arange(1, N + 1, dtype=torch.float32).expand(H, D, N)  # S4D-real
        dt = F.softplus(rnd(B, t, H, D) - 4.0)
        return {"dt": dt, "a": a, "b": rnd(B, t, H, N), "c": rnd(B, t, H, N), "d": rnd(H, D)}
    scan: dict[str, object] = {
        "c": rnd(B, t, H, N) / 8,
        "b": rnd(B, t, H, N) / 8,
        "log_a": -F.softplus(rnd(B, t, H)),
        "lr": F.softplus(rnd(B, t, H)),
    }
    if name == "quasiseparable":
        scan["delta"] = rnd(B, t, H)
    return scan


CASES = [
    "dense",
    "attention",
    "lowrank",
    "toeplitz",
    "vandermonde/fixed",
    "vandermonde/data",
    "cauchy/fixed",
    "cauchy/data",
    "semiseparable",
    "quasiseparable",
    "selective",
]


class Timing(NamedTuple):
    """Median seconds of a function and of the one it alternates with (None: not run),
    and the median over the alternating pairs of their ratio ``other / fn``."""

    fn: float
    other: float | None
    ratio: float | None


def _timeit(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``reps`` runs after a warm-up; a slow warm-up (> 2 s) is the
    measurement, to keep the bench short."""
    return _timeit_pair(fn, None, reps).fn


def _timeit_pair(fn: Callable[[], object], other: Callable[[], object] | None, reps: int) -> Timing:
    """``fn`` and ``other`` run alternately (see the module docstring). The ratio is the
    median of the ``reps`` pairs' ratios: each pair is timed back to back, so a change of
    load moves both of its times, where the ratio of two medians would mix moments."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if other is not None:
        other()
    if first > 2.0:
        if other is None:
            return Timing(first, None, None)
        second = _once(other)
        return Timing(first, second, second / first)
    times: list[float] = []
    other_times: list[float] = []
    for _ in range(reps):
        times.append(_once(fn))
        if other is not None:
            other_times.append(_once(other))
    if not other_times:
        return Timing(statistics.median(times), None, None)
    ratios = [o / f for f, o in zip(times, other_times)]
    return Timing(
        statistics.median(times), statistics.median(other_times), statistics.median(ratios)
    )


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def materialized_product(t: int) -> Callable[[], object] | None:
    """``M @ x`` with a materialised ``[B, H, T, T]`` M; None past the memory limit.

    The cost of the product does not depend on M's entries, so one random matrix per T
    stands for every class (building the matrix, the oracle's other cost, is excluded).
    """
    if 3 * B * H * t * t * 4 > MATERIALIZE_LIMIT_BYTES:
        return None
    m, x = torch.randn(B, H, t, t), torch.randn(B, t, H, D)
    return lambda: apply_matrix(m, x)


def bench_case(name: str, t: int, reps: int) -> Timing | None:
    """The fast path of one class/form timed alternately with ``M @ x`` (``other`` None
    past the memory limit); None when the fast path is skipped (``M @ x`` alone is then
    printed by the caller)."""
    if (name, t) in SKIP_FAST:
        return None
    mat = materialized_product(t)
    cls, _, form = name.partition("/")
    causal = cls != "quasiseparable"
    if name == "selective":
        impl = implementation("semiseparable", True, "selective")
    else:
        impl = implementation(cls, form == "data")
    x = torch.randn(B, t, H, D)
    params = make_params(name, t)
    return _timeit_pair(lambda: impl.fast(x, causal=causal, **params), mat, reps)


def bench_hydra(t: int, reps: int) -> Timing:
    """One scan over [x ; flip x] (quasiseparable) vs two causal scans added."""
    impl = implementation("quasiseparable", True)
    x = torch.randn(B, t, H, D)
    p = make_params("quasiseparable", t)

    def two_scans() -> Tensor:
        fw = chunked_ssd(p["c"], p["b"], x, log_decay=p["log_a"], lr=p["lr"])[0]  # type: ignore[arg-type]
        rev = [flip_time(p[k]) for k in ("c", "b", "log_a", "lr")]  # type: ignore[arg-type]
        bw = chunked_ssd(rev[0], rev[1], flip_time(x), log_decay=rev[2], lr=rev[3])[0]
        return fw + flip_time(bw) + x * p["delta"].unsqueeze(-1)  # type: ignore[attr-defined]

    timing = _timeit_pair(lambda: impl.fast(x, causal=False, **p), two_scans, reps)
    assert timing.other is not None and timing.ratio is not None
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--reps", type=int, default=7)
    # One thread by default: on a shared, oversubscribed CPU two threads spin-wait and
    # time 10-100x worse than one.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES, metavar="CASE")
    parser.add_argument("--no-hydra", action="store_true", help="skip the one-vs-two-scans part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"B={B} H={H} D={D} state={N} float32, threads={torch.get_num_threads()}; times in ms")
    growth: dict[str, dict[int, float]] = {}
    with torch.no_grad():
        print(f"{'class':18} {'T':>6} {'fast ms':>10} {'M @ x ms':>14} {'M@x / fast':>11}")
        for name in args.cases:
            for t in args.lengths:
                timing = bench_case(name, t, args.reps)
                if timing is None:
                    alone = materialized_product(t)
                    mm = None if alone is None else _timeit(alone, args.reps)
                    timing = Timing(math.nan, mm, None)
                    fast = f"skip ({SKIP_FAST[name, t]})"
                else:
                    fast = f"{timing.fn * 1e3:10.1f}"
                    growth.setdefault(name, {})[t] = timing.fn
                mm = timing.other
                mat = f"{mm * 1e3:14.1f}" if mm is not None else "skip (> 8 GB)"
                ratio = f"{timing.ratio:10.1f}x" if timing.ratio is not None else "-"
                print(f"{name:18} {t:6d} {fast:>10} {mat:>14} {ratio:>11}", flush=True)
        print("\ngrowth of the fast path, t(16384) / t(4096)  (T log T ~ 4.7x, T^2 = 16x)")
        for name, by_t in growth.items():
            if 4096 in by_t and 16384 in by_t:
                print(f"  {name:18} {by_t[16384] / by_t[4096]:6.1f}x")
        if args.no_hydra:
            return
        print("\nHydra bidirectional mixer: one scan over [x ; flip x] vs two causal scans added")
        for t in args.lengths:
            hydra = bench_hydra(t, args.reps)
            assert hydra.other is not None
            print(
                f"  T={t:6d}  one scan {hydra.fn * 1e3:8.1f} ms   two scans "
                f"{hydra.other * 1e3:8.1f} ms   two/one = {hydra.ratio:4.2f}"
            )


if __name__ == "__main__":
    main()
