"""Benchmark: archdsl's memory fast paths side by side with published pure-PyTorch peers.

One run, CPU, float32, ``torch.set_num_threads(--threads)`` (default 2); prints tables and
asserts nothing. Times are medians of ``--repeats`` (>= 5) runs after ``--warmup`` runs;
the two sides of a comparison are timed *interleaved* (A, B, A, B, ...) so that a change in
machine load hits both alike. Ratio = peer time / archdsl time (> 1: archdsl is faster).

1. flash-linear-attention (fla)'s pure-PyTorch chunked references, B=1, H=4, dk=dv=64,
   forward and forward+backward, at T = 2048 and 8192 (``--lengths``):

   - ``naive_chunk_simple_gla(q, k, v, g)`` vs `archdsl.memory.chunked_linear.chunked_gated_linear`
     for a matrix memory, dot bias, gd with lr = 1, a data decay per head
     (``W_t = exp(g_t) W_{t-1} + k_t v_t^T``, ``o_t = scale q_t W_t``);
   - ``naive_chunk_gated_delta_rule(q, k, v, g, beta)`` vs
     `archdsl.memory.chunked_delta.chunked_delta_rule` for ``specs/gated_deltanet.arch``'s
     memory (l2 bias, decay per head before the step, gd with a data lr = beta):
     ``W_t = exp(g_t) (I - beta_t k_t k_t^T) W_{t-1} + beta_t k_t v_t^T``.

   Conventions shared by both sides here: layout ``[B, T, H, D]``, ``g`` = log decay per head
   ``[B, T, H]``, ``beta`` = the archdsl ``lr`` ``[B, T, H]``, scale dk^-1/2 on q, zero
   initial state, q and k l2-normalised for the delta rule. Before timing, the outputs and
   the input gradients of both sides are compared (max abs diff, float32: fla's naive
   functions cast their inputs to float32) at a T that is not a multiple of the chunk, where
   both outputs are also compared with a float64 token loop written here, and at every
   timed T.

2. titans-pytorch's ``NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=64)`` (its
   defaults otherwise) vs `archdsl.memory.layer.MemoryLayer` (d_model=256, heads=4) on the
   Titans LMM of ``specs/titans_memory.arch``, forward and forward+backward at T = 2048
   (``--titans-length``), B = 1: as specified, and moved as close to titans-pytorch's default
   configuration as the IR allows (see the notes the script prints: the two do not compute
   the same function, so there is no numeric check, only a comparable workload).

Peers are imported if importable, from an installed package or from a folder given with
``--fla-path`` / ``--titans-path`` (put on ``sys.path`` first, e.g. a ``pip install
--target`` folder); otherwise their rows say "not available". No peer code is copied here.

    python bench/bench_memory_peers.py [--repeats 5] [--warmup 1] [--threads 2]
        [--fla-path DIR] [--titans-path DIR] [--lengths 2048 8192] [--titans-length 2048]
        [--skip-fla] [--skip-titans]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import archdsl
from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_delta import chunked_delta_rule
from archdsl.memory.chunked_linear import DEFAULT_CHUNK, chunked_gated_linear
from archdsl.memory.layer import MemoryLayer

SPECS = Path(__file__).resolve().parents[1] / "specs"
B, H, D = 1, 4, 64
CHECK_T = 300  # not a multiple of either chunk (32, 64): exercises both sides' padding
TITANS_DIM, TITANS_CHUNK = 256, 64
FLA_DISTS = ("fla-core", "flash-linear-attention")

Run = Callable[[], None]


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Median, fastest and slowest of the timed runs, in milliseconds."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.1f} ({self.low:.1f}-{self.high:.1f})"


def interleaved_timings(runs: dict[str, Run], repeats: int, warmup: int) -> dict[str, Timing]:
    """Wall times of each run; the runs take turns inside every repeat."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {n: Timing(statistics.median(ts), min(ts), max(ts)) for n, ts in times.items()}


def forward_run(fn: Callable[[], Tensor]) -> Run:
    def run() -> None:
        with torch.no_grad():
            fn()

    return run


def forward_backward_run(fn: Callable[[], Tensor], leaves: list[Tensor], cotangent: Tensor) -> Run:
    """fn() then backward of <output, cotangent> into `leaves` (their grads reset each time)."""

    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn().backward(cotangent)

    return run


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------
# Peer imports
# ---------------------------------------------------------------------------------------


def add_path(path: str | None) -> None:
    if path:
        sys.path.insert(0, str(Path(path).resolve()))


def try_import(
    module: str, names: tuple[str, ...], dists: tuple[str, ...]
) -> tuple[tuple[Any, ...] | None, str]:
    """The named attributes of `module`, or None and the reason it is not available.

    ``dists``: the distribution names the module may be installed under (for the version).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fla warns that Triton has no GPU here
            mod = importlib.import_module(module)
        found = tuple(getattr(mod, n) for n in names)
    except Exception as exc:  # noqa: BLE001 -- any import failure means "not available"
        return None, f"{type(exc).__name__}: {exc}"
    return found, f"{module} ({dist_version(dists)}) from {Path(mod.__file__ or '?').parent}"


def dist_version(dists: tuple[str, ...]) -> str:
    for dist in dists:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "version unknown"


# ---------------------------------------------------------------------------------------
# Part 1: fla naive chunked references vs archdsl chunked paths
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    fla_name: str
    archdsl_name: str
    delta: bool  # gated delta rule (l2 bias) rather than gated linear (dot bias)


FAMILIES = (
    Family("simple GLA (head decay)", "naive_chunk_simple_gla", "chunked_gated_linear", False),
    Family("gated delta rule", "naive_chunk_gated_delta_rule", "chunked_delta_rule", True),
)


def simple_gla_memory() -> Memory:
    """Matrix memory, dot bias, gd lr = 1, data decay per head (GLA with a scalar gate)."""
    return Memory(
        name="simple_gla",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", per="head", act="logsigmoid")),
        learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)),
    )


def gated_delta_memory() -> Memory:
    mem = archdsl.load(str(SPECS / "gated_deltanet.arch")).ir.mixer("memory")
    assert isinstance(mem, Memory)
    return mem


def family_inputs(family: Family, t: int) -> dict[str, Tensor]:
    """q, k, v [B, T, H, D], g = log decay [B, T, H] (and beta [B, T, H] for the delta rule)."""
    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(B, t, H, D, generator=gen) for _ in range(3))
    # log decays spread over (-5, -0.01): strong and weak forgetting in one sequence
    g = F.logsigmoid(torch.randn(B, t, H, generator=gen) * 2.0 + 2.0)
    x = {"q": q, "k": k, "v": v, "g": g}
    if family.delta:
        x["q"], x["k"] = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        x["beta"] = torch.sigmoid(torch.randn(B, t, H, generator=gen))
    return x


def fla_output(family: Family, fn: Any, x: dict[str, Tensor]) -> Tensor:
    if family.delta:
        o, _ = fn(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], chunk_size=64)
    else:
        o, _ = fn(x["q"], x["k"], x["v"], g=x["g"], chunk_size=64)
    return o  # type: ignore[no-any-return]


def archdsl_output(family: Family, mem: Memory, x: dict[str, Tensor]) -> Tensor:
    if family.delta:
        o, _ = chunked_delta_rule(mem, x["q"], x["k"], x["v"], lr=x["beta"], decay=x["g"])
    else:
        o, _ = chunked_gated_linear(mem, x["q"], x["k"], x["v"], lr=1.0, decay=x["g"])
    return o


def outputs_and_grads(
    call: Callable[[dict[str, Tensor]], Tensor], x: dict[str, Tensor], cot: Tensor
) -> dict[str, Tensor]:
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    o = call(leaves)
    o.backward(cot)
    out = {"o": o.detach()}
    out.update({f"d{n}": t.grad for n, t in leaves.items() if t.grad is not None})
    return out


def token_loop64(family: Family, x: dict[str, Tensor]) -> Tensor:
    """The recurrence one token at a time in float64: an independent check of both sides."""
    q, k, v, g = (x[n].double() for n in ("q", "k", "v", "g"))
    beta = x["beta"].double() if family.delta else torch.ones_like(g)
    w = q.new_zeros(B, H, D, D)
    outs = []
    for t in range(q.shape[1]):
        w = torch.exp(g[:, t, :, None, None]) * w
        kt = k[:, t]
        target = v[:, t] - torch.einsum("bhk,bhkv->bhv", kt, w) if family.delta else v[:, t]
        w = w + (beta[:, t, :, None] * kt)[..., :, None] * target[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * D**-0.5, w))
    return torch.stack(outs, dim=1)


def compare(family: Family, fn: Any, mem: Memory, t: int, with_loop: bool) -> str:
    """Max abs diff of o and every input gradient, archdsl vs fla (float32 inputs)."""
    x = family_inputs(family, t)
    cot = torch.randn(B, t, H, D, generator=torch.Generator().manual_seed(1))
    ours = outputs_and_grads(lambda y: archdsl_output(family, mem, y), x, cot)
    theirs = outputs_and_grads(lambda y: fla_output(family, fn, y), x, cot)
    parts = []
    for name, a in ours.items():
        diff = (a - theirs[name]).abs().max().item()
        parts.append(f"{name} {diff:.1e}/{a.abs().max().item():.3g}")
    if with_loop:
        ref = token_loop64(family, x)
        for side, o in (("archdsl", ours["o"]), ("fla", theirs["o"])):
            parts.append(f"{side} vs loop {(o.double() - ref).abs().max().item():.1e}")
    return ", ".join(parts)


def bench_family(
    family: Family, fn: Any, mem: Memory, t: int, backward: bool, repeats: int, warmup: int
) -> tuple[Timing, Timing]:
    """(fla, archdsl) timings."""
    x = family_inputs(family, t)
    cot = torch.randn(B, t, H, D, generator=torch.Generator().manual_seed(1))
    if backward:
        x = {n: v.clone().requires_grad_() for n, v in x.items()}
    calls: dict[str, Callable[[], Tensor]] = {
        "fla": lambda: fla_output(family, fn, x),
        "archdsl": lambda: archdsl_output(family, mem, x),
    }
    leaves = list(x.values())
    runs = {
        name: forward_backward_run(c, leaves, cot) if backward else forward_run(c)
        for name, c in calls.items()
    }
    ms = interleaved_timings(runs, repeats, warmup)
    return ms["fla"], ms["archdsl"]


def fla_section(args: argparse.Namespace) -> None:
    add_path(args.fla_path)
    fns, where = try_import("fla.ops.simple_gla.naive", ("naive_chunk_simple_gla",), FLA_DISTS)
    gdr, where_gdr = try_import(
        "fla.ops.gated_delta_rule.naive", ("naive_chunk_gated_delta_rule",), FLA_DISTS
    )
    print("\n== 1. flash-linear-attention naive chunked references vs archdsl chunked paths ==")
    print(f"   fla simple_gla:       {where}")
    print(f"   fla gated_delta_rule: {where_gdr}")
    peers = {FAMILIES[0].name: fns[0] if fns else None, FAMILIES[1].name: gdr[0] if gdr else None}
    mems = {FAMILIES[0].name: simple_gla_memory(), FAMILIES[1].name: gated_delta_memory()}
    print(
        "   same function? each entry is 'max|archdsl - fla| / max|archdsl|' (diff, then scale)"
        " for o (output) and dX (gradient wrt input X under a random cotangent), float32; at"
        " T=300 also max|o - o_loop| against a float64 token loop"
    )
    for family in FAMILIES:
        fn = peers[family.name]
        if fn is None:
            print(f"   {family.name}: not available")
            continue
        for t in (CHECK_T, *args.lengths):
            diffs = compare(family, fn, mems[family.name], t, with_loop=t == CHECK_T)
            print(f"   {family.name}, T={t}: {diffs}")
    header = (
        f"   {'family':<24} {'T':>5} {'pass':<8} {'fla naive ms':>22} {'archdsl ms':>22} "
        f"{'ratio':>7}"
    )
    print("\n" + header + "\n   " + "-" * (len(header) - 3))
    for family in FAMILIES:
        fn = peers[family.name]
        for t in args.lengths:
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                row = f"   {family.name:<24} {t:>5} {mode:<8}"
                if fn is None:
                    print(f"{row} {'not available':>22}")
                    continue
                peer_ms, ours_ms = bench_family(
                    family, fn, mems[family.name], t, backward, args.repeats, args.warmup
                )
                ratio = peer_ms.median / ours_ms.median
                print(f"{row} {peer_ms!s:>22} {ours_ms!s:>22} {ratio:>6.2f}x")
    print(
        "   archdsl functions: chunked_gated_linear (simple GLA), chunked_delta_rule (gated "
        f"delta rule); fla at chunk 64 (its default), archdsl at its default {DEFAULT_CHUNK}."
    )


# ---------------------------------------------------------------------------------------
# Part 2: titans-pytorch NeuralMemory vs archdsl's Titans LMM layer
# ---------------------------------------------------------------------------------------

TITANS_PYTORCH_NOTE = (
    "NeuralMemory defaults: memory MLP depth 2, expansion 4 (64->256->64), gelu, wrapped as "
    "LN(f(x)) * (1 + gamma) + x (gamma also a memory weight); loss mean_d (M(k) - v)^2; "
    "lr = sigmoid(linear(x)) per token and head; momentum (order 1) and forgetting "
    "(W_n = (1 - a_n) W_{n-1} + S_n) with one gate per 64-token chunk (average-pooled input); "
    "batch_size=None: EVERY chunk's gradients taken at the initial weights W0 (one parallel "
    "vmap over all chunks), momentum / decay as scans over chunks; reads with the weights "
    "of the last completed chunk (chunk-granular); pre-RMSNorm, no conv, no q/k norm, "
    "per-head sigmoid output gate, output projection."
)


@dataclass(frozen=True)
class TitansVariant:
    label: str
    note: str
    mem: Memory


def titans_variants(t: int) -> list[TitansVariant]:
    spec = archdsl.load(str(SPECS / "titans_memory.arch"), d_model=TITANS_DIM, heads=H)
    mem = spec.ir.mixer("memory")
    assert isinstance(mem, Memory)
    matched = mem.model_copy(
        update={
            "structure": Structure(
                kind="mlp", depth=2, expand=4.0, act="gelu", residual=True, norm="layer"
            ),
            "features": Features(
                conv=0, act="none", norm="none", out_norm="none", out_gate="sigmoid"
            ),
        }
    )
    common = (
        "l2 bias 1/2||M(k)-v||^2, momentum + forgetting after the step (when=after), gates "
        "per token and head"
    )
    return [
        TitansVariant(
            "archdsl spec (b=64)",
            "specs/titans_memory.arch as written: mlp depth 2, expand 4, silu, x + f(x) (no "
            f"norm), {common}, b=64 (gradients at each chunk-start memory: chunks run in "
            "sequence), per-token reads (dual form); conv 4, silu, l2 q/k, rms out norm, "
            "per-channel sigmoid out gate",
            mem,
        ),
        TitansVariant(
            "archdsl matched (b=64)",
            "as titans-pytorch where the IR allows: gelu, x + LN(f(x)) (no learned gamma), no "
            f"conv / act / q-k norm / out norm, per-channel sigmoid out gate; {common}, b=64",
            matched,
        ),
        TitansVariant(
            f"archdsl matched (b={t})",
            f"the same with b = T = {t}: every gradient at W0, as titans-pytorch's default "
            "batch_size=None (but still per-token gates and per-token reads)",
            matched.model_copy(update={"batch": t}),
        ),
    ]


def titans_section(args: argparse.Namespace) -> None:
    add_path(args.titans_path)
    found, where = try_import("titans_pytorch", ("NeuralMemory",), ("titans-pytorch",))
    t = args.titans_length
    print("\n== 2. titans-pytorch NeuralMemory vs archdsl Titans LMM layer ==")
    print(f"   titans-pytorch: {where}")
    print(f"   B=1, T={t}, d_model=256, heads=4, head dim 64, chunk 64, float32")
    torch.manual_seed(0)
    x = torch.randn(1, t, TITANS_DIM)
    cot = torch.randn(1, t, TITANS_DIM, generator=torch.Generator().manual_seed(1))
    modules: dict[str, torch.nn.Module] = {}
    notes: dict[str, str] = {}
    if found is not None:
        modules["titans-pytorch"] = found[0](
            dim=TITANS_DIM, heads=H, dim_head=D, chunk_size=TITANS_CHUNK
        )
        notes["titans-pytorch"] = TITANS_PYTORCH_NOTE
    for variant in titans_variants(t):
        modules[variant.label] = MemoryLayer(variant.mem, d_model=TITANS_DIM, heads=H)
        notes[variant.label] = variant.note

    def call(module: torch.nn.Module) -> Callable[[], Tensor]:
        def fn() -> Tensor:
            y = module(x)
            return y[0] if isinstance(y, tuple) else y  # NeuralMemory returns (y, state)

        return fn

    results: dict[str, dict[str, Timing]] = {}
    for backward in (False, True):
        runs = {
            name: forward_backward_run(call(m), list(m.parameters()), cot)
            if backward
            else forward_run(call(m))
            for name, m in modules.items()
        }
        results["fwd+bwd" if backward else "fwd"] = interleaved_timings(
            runs, args.repeats, args.warmup
        )
    with torch.no_grad():
        shapes = {n: tuple(call(m)().shape) for n, m in modules.items()}
        finite = {n: bool(torch.isfinite(call(m)()).all()) for n, m in modules.items()}
    peer = "titans-pytorch"
    header = (
        f"   {'implementation':<26} {'params':>8} {'fwd ms':>22} {'fwd+bwd ms':>22} "
        f"{'ratio fwd':>10} {'ratio fwd+bwd':>14}"
    )
    print("\n" + header + "\n   " + "-" * (len(header) - 3))
    if peer not in modules:
        print(f"   {peer:<26} not available")
    for name, m in modules.items():
        params = sum(p.numel() for p in m.parameters())
        cells = [f"{name:<26} {params:>8}"]
        cells += [f"{results['fwd'][name]!s:>22}", f"{results['fwd+bwd'][name]!s:>22}"]
        for mode, width in (("fwd", 10), ("fwd+bwd", 14)):
            ratio = "-"
            if peer in modules:
                ratio = f"{results[mode][peer].median / results[mode][name].median:.3f}x"
            cells.append(f"{ratio:>{width}}")
        print("   " + " ".join(cells) + f"   out {shapes[name]}, finite={finite[name]}")
    print("   ratio = titans-pytorch time / this row's time (> 1: faster than titans-pytorch)")
    print("   What each side computes (the two are different functions; no numeric check):")
    for name, note in notes.items():
        print(f"   - {name}: {note}")


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (median); >= 5")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192], help="fla section T")
    p.add_argument("--titans-length", type=int, default=2048, help="titans section T")
    p.add_argument("--fla-path", default=None, help="folder to put on sys.path to import fla")
    p.add_argument("--titans-path", default=None, help="folder on sys.path for titans_pytorch")
    p.add_argument("--skip-fla", action="store_true")
    p.add_argument("--skip-titans", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be >= 5")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, CPU; times in ms:"
        f" median (fastest-slowest) of {args.repeats} after {args.warmup} warm-up; load average"
        f" at start: {load_average()}"
    )
    if not args.skip_fla:
        fla_section(args)
    if not args.skip_titans:
        titans_section(args)
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
