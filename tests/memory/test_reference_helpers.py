"""Small builders shared by the h1 memory tests (IR objects and random inputs)."""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure

DT = torch.float64


def make_memory(
    structure: str = "matrix",
    bias: str = "l2",
    retention: str = "none",
    learner: str = "gd",
    batch: int = 1,
    **kw: object,
) -> Memory:
    """A Memory IR node; extra keywords go to the sub-models by prefix (s_, b_, r_, l_)."""
    sub = {p: {k[2:]: v for k, v in kw.items() if k.startswith(p + "_")} for p in "sbrl"}
    alpha = Gate(mode="data", act="logsigmoid") if retention in ("decay", "lq", "kl") else None
    beta = Gate(mode="data", act="sigmoid") if learner == "momentum" else None
    delta = Gate(mode="data", act="softplus") if bias == "huber" else None
    return Memory(
        name="m",
        structure=Structure(kind=structure, **sub["s"]),  # type: ignore[arg-type]
        bias=Bias(kind=bias, delta=delta, **sub["b"]),  # type: ignore[arg-type]
        retention=Retention(kind=retention, alpha=alpha, **sub["r"]),  # type: ignore[arg-type]
        learner=Learner(kind=learner, lr=Gate(mode="data", act="sigmoid"), beta=beta, **sub["l"]),  # type: ignore[arg-type]
        batch=batch,
    )


def rand(*shape: int, seed: int | None = None) -> Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randn(*shape, dtype=DT)


def gates(B: int, T: int, H: int, dk: int = 1) -> dict[str, Tensor]:
    """lr in (0, 0.5), log alpha in (log 0.8, 0), momentum in (0.5, 0.95), delta in (0.3, 1.3)."""
    shape = (B, T, H) if dk == 1 else (B, T, H, dk)
    return {
        "lr": 0.5 * torch.rand(*shape, dtype=DT),
        "decay": torch.log(0.8 + 0.2 * torch.rand(*shape, dtype=DT)),
        "momentum": 0.5 + 0.45 * torch.rand(B, T, H, dtype=DT),
        "delta": 0.3 + torch.rand(B, T, H, dtype=DT),
    }
