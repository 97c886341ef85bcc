"""Argument checking for the memory algorithms: turn the call's tensors into one record.

Every memory function (reference, chunked) takes q, k ``[B, T, H, dk]``, v ``[B, T, H, dv]``
and the gates of the rules.py signature; `prepare_inputs` checks shapes, turns floats into
tensors, applies HGRN2's tied key (``k = 1 - alpha``) and returns `MemoryInputs`, in which
every gate has a trailing channel axis: ``[B, T, H, 1]`` (per head) or ``[B, T, H, dk]``
(per key channel), so that it broadcasts against a key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from archdsl.ir.memory import Memory


@dataclass(frozen=True)
class MemoryInputs:
    q: Tensor  # [B, T, H, dk], already multiplied by the read scale
    k: Tensor  # [B, T, H, dk]
    v: Tensor  # [B, T, H, dv]
    lr: Tensor  # [B, T, H, 1 or dk]
    log_alpha: Tensor | None  # [B, T, H, 1 or dk], log of the fraction kept
    momentum: Tensor | None  # [B, T, H, 1]
    delta: Tensor  # [B, T, H] Huber threshold (zeros when unused)

    @property
    def per_channel(self) -> bool:
        """Whether some gate varies over the key channels."""
        shapes = [self.lr.shape[-1]] + (
            [self.log_alpha.shape[-1]] if self.log_alpha is not None else []
        )
        return max(shapes) > 1


def _as_gate(name: str, x: Tensor | float | None, ref: Tensor, dk: int) -> Tensor | None:
    """A gate as ``[B, T, H, 1 or dk]``; floats broadcast to every token and head."""
    if x is None:
        return None
    B, T, H = ref.shape[:3]
    if not isinstance(x, Tensor):
        return torch.full((B, T, H, 1), float(x), dtype=ref.dtype, device=ref.device)
    if x.shape == (B, T, H):
        return x.unsqueeze(-1)
    if x.shape == (B, T, H, dk):
        return x
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}; expected [B, T, H] = {(B, T, H)} (per head) "
        f"or [B, T, H, dk] = {(B, T, H, dk)} (per key channel)"
    )


def _check_qkv(mem: Memory, q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"memory '{mem.name}': q, k, v must be [B, T, H, D]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise ValueError(
            f"memory '{mem.name}': q {tuple(q.shape)} and k {tuple(k.shape)} must have the "
            "same shape [B, T, H, dk]"
        )
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"memory '{mem.name}': v {tuple(v.shape)} must share [B, T, H] with k {tuple(k.shape)}"
        )
    if mem.structure.kind == "vector" and v.shape[-1] != k.shape[-1]:
        raise ValueError(f"memory '{mem.name}': a vector memory needs dk == dv")
    if mem.structure.kind == "mlp" and mem.structure.residual and v.shape[-1] != k.shape[-1]:
        raise ValueError(f"memory '{mem.name}': a residual mlp memory needs dk == dv")


def _check_gate_use(mem: Memory, decay: object, momentum: object) -> None:
    kind = mem.retention.kind
    if kind == "decay" and decay is None:
        raise ValueError(f"memory '{mem.name}': retention decay needs a `decay` (log alpha)")
    if kind == "none" and decay is not None:
        raise ValueError(f"memory '{mem.name}': retention 'none' takes no `decay`")
    if mem.learner.kind == "momentum" and momentum is None:
        raise ValueError(f"memory '{mem.name}': the momentum learner needs `momentum` (beta)")
    if mem.learner.kind != "momentum" and momentum is not None:
        raise ValueError(f"memory '{mem.name}': learner '{mem.learner.kind}' takes no `momentum`")
    if mem.retention.tie_key and decay is None:
        raise ValueError(f"memory '{mem.name}': tie_key needs a per-channel `decay`")


def default_scale(mem: Memory, dk: int) -> float:
    """Features.scale, else dk^-1/2 for vector / matrix memories and 1 for mlp memories."""
    if mem.features.scale is not None:
        return mem.features.scale
    return 1.0 if mem.structure.kind == "mlp" else dk**-0.5


def prepare_inputs(
    mem: Memory,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    lr: Tensor | float,
    decay: Tensor | None,
    momentum: Tensor | float | None,
    delta: Tensor | float | None,
    scale: float | None,
) -> MemoryInputs:
    """Check the arguments of a memory function and normalise them (see module doc)."""
    _check_qkv(mem, q, k, v)
    _check_gate_use(mem, decay, momentum)
    dk = k.shape[-1]
    lr_t = _as_gate("lr", lr, k, dk)
    assert lr_t is not None
    log_alpha = _as_gate("decay", decay, k, dk)
    beta = _as_gate("momentum", momentum, k, dk)
    if beta is not None and beta.shape[-1] != 1:
        raise ValueError("momentum must be per head: [B, T, H]")
    if mem.bias.kind == "huber" and delta is None:
        raise ValueError(f"memory '{mem.name}': the huber bias needs `delta`")
    delta_t = _as_gate("delta", 0.0 if delta is None else delta, k, dk)
    assert delta_t is not None
    if delta_t.shape[-1] != 1:
        raise ValueError("delta (the Huber threshold) must be per head: [B, T, H]")
    if mem.structure.kind == "mlp" and max(lr_t.shape[-1], _width(log_alpha)) > 1:
        raise ValueError(
            f"memory '{mem.name}': per-channel lr / decay are defined for vector and matrix "
            "memories only; give an mlp memory per-head gates [B, T, H]"
        )
    if mem.retention.tie_key:
        assert log_alpha is not None
        if log_alpha.shape[-1] != dk:
            raise ValueError(f"memory '{mem.name}': tie_key needs a per-channel decay")
        k = 1.0 - torch.exp(log_alpha)
    s = default_scale(mem, dk) if scale is None else scale
    return MemoryInputs(q * s, k, v, lr_t, log_alpha, beta, delta_t.squeeze(-1))


def _width(x: Tensor | None) -> int:
    return 1 if x is None else x.shape[-1]


def check_arguments(
    mem: Memory,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    lr: Tensor | float,
    decay: Tensor | None,
    momentum: Tensor | float | None,
    delta: Tensor | float | None,
) -> None:
    """The checks of `prepare_inputs` without computing anything (shapes only): raises
    ValueError naming the argument and the expected shape."""
    _check_qkv(mem, q, k, v)
    _check_gate_use(mem, decay, momentum)
    B, T, H, dk = k.shape
    per_head, per_channel = (B, T, H), (B, T, H, dk)
    for name, x, allowed in (
        ("lr", lr, (per_head, per_channel)),
        ("decay", decay, (per_head, per_channel)),
        ("momentum", momentum, (per_head,)),
        ("delta", delta, (per_head,)),
    ):
        if isinstance(x, Tensor) and tuple(x.shape) not in allowed:
            raise ValueError(
                f"memory '{mem.name}': {name} has shape {tuple(x.shape)}; expected one of "
                f"{[list(a) for a in allowed]} ([B, T, H] per head, [B, T, H, dk] per channel)"
            )
    if mem.bias.kind == "huber" and delta is None:
        raise ValueError(f"memory '{mem.name}': the huber bias needs `delta`")
