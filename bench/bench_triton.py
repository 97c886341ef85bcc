"""Benchmark the generated Triton kernels (forward only).

- Without CUDA: runs the kernels through the Triton interpreter at one small shape and
  reports wall time next to the torch chunked path (the interpreter is for checking, not
  speed: expect it to be orders of magnitude slower).
- With CUDA: gated linear kernel vs the torch chunked expression
  (`archdsl.codegen.triton.recompute.gated_linear_torch`) and attention kernel vs
  `torch.nn.functional.scaled_dot_product_attention` (causal), at T = 2048 .. 16384.

Usage: ``python bench/bench_triton.py [--dtype bf16|fp16|fp32]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

if not torch.cuda.is_available():
    # must happen before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

from archdsl.codegen.triton.ops import triton_attention, triton_gated_linear  # noqa: E402
from archdsl.codegen.triton.recompute import gated_linear_torch  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def wall_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time in milliseconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def gpu_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def gated_linear_inputs(
    B: int, T: int, H: int, D: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, ...]:
    q = torch.randn(B, T, H, D, device=device, dtype=dtype)
    k = torch.randn(B, T, H, D, device=device, dtype=dtype) / D**0.5
    v = torch.randn(B, T, H, D, device=device, dtype=dtype)
    log_decay = -torch.rand(B, T, H, device=device, dtype=torch.float32) * 0.1
    lr = torch.rand(B, T, H, device=device, dtype=torch.float32)
    return q, k, v, log_decay, lr


def bench_cpu_interpreter() -> None:
    B, T, H, D = 1, 128, 2, 32
    print(f"CPU only: Triton interpreter, B={B} T={T} H={H} D={D} fp32 (forward)")
    q, k, v, g, lr = gated_linear_inputs(B, T, H, D, torch.float32, "cpu")
    rows = [
        ("gated_linear (triton interp)", lambda: triton_gated_linear(q, k, v, g, lr)),
        ("gated_linear (torch chunked)", lambda: gated_linear_torch(q, k, v, g, lr, D**-0.5, None)),
        ("attention causal (triton interp)", lambda: triton_attention(q, k, v)),
        (
            "attention causal (torch SDPA)",
            lambda: torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            ),
        ),
    ]
    print(f"| {'op':36s} | {'ms':>10s} |")
    print(f"|{'-' * 38}|{'-' * 12}|")
    for name, fn in rows:
        print(f"| {name:36s} | {wall_ms(fn):10.2f} |")


def bench_cuda(dtype: torch.dtype) -> None:
    B, H, D = 1, 16, 64
    print(f"CUDA ({torch.cuda.get_device_name()}): B={B} H={H} D={D} {dtype} (forward, ms)")
    print(
        f"| {'T':>6s} | {'glin triton':>11s} | {'glin torch':>10s} | {'attn triton':>11s} "
        f"| {'SDPA':>8s} |"
    )
    print(f"|{'-' * 8}|{'-' * 13}|{'-' * 12}|{'-' * 13}|{'-' * 10}|")
    for T in (2048, 4096, 8192, 16384):
        q, k, v, g, lr = gated_linear_inputs(B, T, H, D, dtype, "cuda")
        glin_triton = gpu_ms(lambda: triton_gated_linear(q, k, v, g, lr))  # noqa: B023
        glin_torch = gpu_ms(lambda: gated_linear_torch(q, k, v, g, lr, D**-0.5, None))  # noqa: B023
        attn_triton = gpu_ms(lambda: triton_attention(q, k, v))  # noqa: B023
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        sdpa = gpu_ms(
            lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)  # noqa: B023
        )
        print(
            f"| {T:6d} | {glin_triton:11.3f} | {glin_torch:10.3f} | {attn_triton:11.3f} "
            f"| {sdpa:8.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        if torch.cuda.is_available():
            bench_cuda(DTYPES[args.dtype])
        else:
            print("no CUDA device: reporting interpreter time only")
            bench_cpu_interpreter()


if __name__ == "__main__":
    main()
