"""Deep-memory benchmark: chunked_minibatch_ttt vs the token-by-token reference (CPU).

Prints a table (no asserts): float32, B=1, H=4, dk=dv=64, forward and forward+backward;
each chunked cell is the median of ``--repeats`` runs after a warm-up run.
The reference runs only at the short lengths (``--ref-max``); longer reference times are
extrapolated linearly in T and marked with ``~``. Run: ``python bench/bench_memory_deep.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_ttt import chunked_minibatch_ttt
from archdsl.memory.reference import memory_reference
from archdsl.memory.state import MemoryState

B, H, D = 1, 4, 64
DATA = Gate(mode="data", act="sigmoid")


def models() -> dict[str, Memory]:
    mlp = Structure(kind="mlp", depth=2, expand=4.0, act="silu")
    miras = Structure(kind="mlp", depth=2, expand=4.0, act="gelu", residual=True, norm="layer")
    return {
        "titans_lmm(b=64)": Memory(
            name="titans",
            structure=mlp,
            bias=Bias(kind="l2"),
            retention=Retention(kind="decay", alpha=DATA, when="after"),
            learner=Learner(kind="momentum", lr=DATA, beta=DATA),
            batch=64,
        ),
        "ttt_mlp(b=16)": Memory(
            name="ttt",
            structure=mlp,
            bias=Bias(kind="l2"),
            retention=Retention(kind="none"),
            learner=Learner(kind="gd", lr=DATA),
            batch=16,
        ),
        "moneta(b=64)": Memory(
            name="moneta",
            structure=miras,
            bias=Bias(kind="lp", p=3.0),
            retention=Retention(kind="lq", q=4.0, alpha=DATA),
            learner=Learner(kind="gd", lr=DATA),
            batch=64,
        ),
        "matrix_l2(b=16)": Memory(
            name="ttt_linear",
            structure=Structure(kind="matrix"),
            bias=Bias(kind="l2"),
            retention=Retention(kind="none"),
            learner=Learner(kind="gd", lr=DATA),
            batch=16,
        ),
    }


def inputs(mem: Memory, T: int) -> tuple[list[Tensor], dict[str, object]]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    leaves = [q, k, v]
    kw: dict[str, object] = {"lr": 0.1 * torch.rand(B, T, H)}
    if mem.retention.alpha is not None:
        kw["decay"] = torch.log(0.9 + 0.1 * torch.rand(B, T, H))
    if mem.learner.kind == "momentum":
        kw["momentum"] = 0.9 * torch.ones(B, T, H)
    if mem.structure.kind == "mlp":
        hid = int(mem.structure.expand * D)
        w = (0.05 * torch.randn(B, H, D, hid), 0.05 * torch.randn(B, H, hid, D))
        kw["initial_state"] = MemoryState(w)
        leaves += list(w)
    leaves += [x for x in kw.values() if isinstance(x, Tensor)]
    return leaves, kw


def _once(fn: Callable[..., tuple[Tensor, object]], mem: Memory, T: int, backward: bool) -> float:
    leaves, kw = inputs(mem, T)
    for x in leaves:
        x.requires_grad_(backward)
    q, k, v = leaves[:3]
    start = time.perf_counter()
    o, _ = fn(mem, q, k, v, **kw)
    if backward:
        o.square().sum().backward()
    return time.perf_counter() - start


def seconds(
    fn: Callable[..., tuple[Tensor, object]], mem: Memory, T: int, backward: bool, repeats: int = 1
) -> float:
    """Median of `repeats` timed runs after one untimed warm-up run."""
    _once(fn, mem, T, backward)
    return statistics.median(_once(fn, mem, T, backward) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 8192])
    parser.add_argument("--ref-max", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    head = f"{'model':18s} {'pass':8s}" + "".join(f" {'T=' + str(t):>17s}" for t in args.lengths)
    print(head + f" {'t(8192)/t(1024)':>16s}")
    for name, mem in models().items():
        for backward in (False, True):
            chunk, ref = [], []
            ref_per_token = None
            for length in args.lengths:
                chunk.append(seconds(chunked_minibatch_ttt, mem, length, backward, args.repeats))
                if length <= args.ref_max:
                    r = seconds(memory_reference, mem, length, backward)
                    ref.append(f"{r:7.2f}")
                    ref_per_token = r / length
                else:
                    ref.append(f"~{ref_per_token * length:6.1f}" if ref_per_token else "   -")
            cells = "".join(f" {c:7.3f} / {r:>7s}" for c, r in zip(chunk, ref))
            ratio = chunk[args.lengths.index(8192)] / chunk[args.lengths.index(1024)]
            print(f"{name:18s} {'fwd+bwd' if backward else 'fwd':8s}{cells} {ratio:16.2f}")
    print(
        f"cells: chunked seconds (median of {args.repeats} after a warm-up) / reference seconds "
        "(one run after a warm-up; '~': extrapolated linearly in T)"
    )


if __name__ == "__main__":
    main()
