"""Benchmark: chunked matrix memories vs a token loop on CPU (prints a table, asserts nothing).

Families (B=1, H=4, dk=dv=64, float32): gated linear with a per-head data decay (Mamba2 /
simple GLA), gated linear with a per-key-channel decay (GLA), delta rule (DeltaNet), gated
delta rule (Gated DeltaNet). For each: forward and forward+backward at T = 512, 1024, 2048,
8192, chunked (`archdsl.memory.chunked_linear` / `chunked_delta`) against a plain token
loop (vectorised over batch and heads). The loop at T = 8192 is estimated as 4 x its time
at T = 2048 (marked ``~``) unless ``--full-loop``. Times are medians of ``--repeats`` runs
after one warm-up, in milliseconds.

    python bench/bench_memory_matrix.py [--repeats 5] [--full-loop] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_delta import chunked_delta_rule
from archdsl.memory.chunked_linear import chunked_gated_linear

B, H, D = 1, 4, 64
LENGTHS = (512, 1024, 2048, 8192)
SHOWN = (512, 2048, 8192)


@dataclass(frozen=True)
class Family:
    name: str
    bias: str  # "dot" (gated linear) or "l2" (delta rule)
    decay: str | None  # None, "head" or "channel"


FAMILIES = (
    Family("gated linear, head decay", "dot", "head"),
    Family("GLA, channel decay", "dot", "channel"),
    Family("delta rule", "l2", None),
    Family("gated delta rule", "l2", "head"),
)


def memory_for(family: Family) -> Memory:
    retention = (
        Retention(kind="decay", alpha=Gate(mode="data", per=family.decay))  # type: ignore[arg-type]
        if family.decay
        else Retention(kind="none")
    )
    return Memory(
        name=family.name,
        structure=Structure(kind="matrix"),
        bias=Bias(kind=family.bias),  # type: ignore[arg-type]
        retention=retention,
        learner=Learner(kind="gd", lr=Gate(mode="data", act="sigmoid")),
    )


def make_inputs(family: Family, t: int) -> dict[str, Tensor | None]:
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(B, t, H, D, generator=gen)
    decay = None
    if family.decay == "head":
        decay = torch.nn.functional.logsigmoid(torch.randn(B, t, H, generator=gen) + 2.0)
    elif family.decay == "channel":
        decay = torch.nn.functional.logsigmoid(torch.randn(B, t, H, D, generator=gen)) / 16
    return {
        "q": torch.randn(B, t, H, D, generator=gen),
        "k": torch.nn.functional.normalize(k, dim=-1) if family.bias == "l2" else k,
        "v": torch.randn(B, t, H, D, generator=gen),
        "lr": torch.sigmoid(torch.randn(B, t, H, generator=gen)),
        "decay": decay,
    }


def token_loop(family: Family, x: dict[str, Tensor]) -> Tensor:
    """The recurrence one token at a time, vectorised over batch and heads."""
    q, k, v, lr, decay = x["q"] * D**-0.5, x["k"], x["v"], x["lr"], x.get("decay")
    w = q.new_zeros(B, H, D, D)
    outs = []
    for t in range(q.shape[1]):
        if decay is not None:
            gate = decay[:, t, :, :, None] if decay.dim() == 4 else decay[:, t, :, None, None]
            w = torch.exp(gate) * w
        write = (lr[:, t, :, None] * k[:, t])[..., :, None]
        if family.bias == "l2":
            err = torch.einsum("bhk,bhkv->bhv", k[:, t], w) - v[:, t]
            w = w - write * err[..., None, :]
        else:
            w = w + write * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], w))
    return torch.stack(outs, dim=1)


def chunked(family: Family, x: dict[str, Tensor]) -> Tensor:
    fn = chunked_delta_rule if family.bias == "l2" else chunked_gated_linear
    o, _ = fn(memory_for(family), x["q"], x["k"], x["v"], lr=x["lr"], decay=x.get("decay"))
    return o


def median_ms(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timed(
    impl: Callable[[Family, dict[str, Tensor]], Tensor],
    family: Family,
    t: int,
    backward: bool,
    repeats: int,
) -> float:
    raw = make_inputs(family, t)
    x = {n: v for n, v in raw.items() if v is not None}
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                impl(family, x)

        return median_ms(forward, repeats)
    leaves = {n: v.clone().requires_grad_() for n, v in x.items()}

    def forward_backward() -> None:
        impl(family, leaves).sum().backward()
        for v in leaves.values():
            v.grad = None

    return median_ms(forward_backward, repeats)


def bench_family(family: Family, repeats: int, full_loop: bool) -> list[str]:
    rows = []
    for backward in (False, True):
        mode = "fwd+bwd" if backward else "fwd"
        fast = {t: timed(chunked, family, t, backward, repeats) for t in LENGTHS}
        slow: dict[int, tuple[float, bool]] = {}
        for t in SHOWN:
            if t == 8192 and not full_loop:
                slow[t] = (4 * slow[2048][0], True)
            else:
                slow[t] = (timed(token_loop, family, t, backward, max(1, repeats // 2)), False)
        cells = []
        for t in SHOWN:
            loop_ms, estimated = slow[t]
            mark = "~" if estimated else " "
            cells.append(f"{fast[t]:9.1f} {mark}{loop_ms:9.1f} {loop_ms / fast[t]:6.1f}x")
        ratio = fast[8192] / fast[1024]
        rows.append(f"{family.name:26s} {mode:8s}" + " |".join(cells) + f" | {ratio:6.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-loop", action="store_true", help="time the loop at T=8192")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU float32, B={B} H={H} dk=dv={D}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} runs, ms"
    )
    head = " |".join(f"{'chunked':>9s} {'loop':>10s} {'speedup':>7s}" for _ in SHOWN)
    groups = " |".join(f"{'T = ' + str(t):^28s}" for t in SHOWN)
    print(f"{'':26s} {'':8s}{groups} | t8192/")
    print(f"{'family':26s} {'pass':8s}{head} | t1024")
    for family in FAMILIES:
        for row in bench_family(family, args.repeats, args.full_loop):
            print(row)
    print("~ : loop time estimated as 4 x T=2048 (run with --full-loop to measure)")


if __name__ == "__main__":
    main()
