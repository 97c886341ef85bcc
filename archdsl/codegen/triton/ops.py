"""Autograd ops on generated Triton kernels, in the memory-core conventions.

- `triton_gated_linear(q, k, v, log_decay, lr, scale, initial_state, output_final_state)`
  -> ``(o, final_state | None)``: ``W_t = alpha_t W_{t-1} + lr_t k_t v_t^T``,
  ``o_t = scale q_t W_t`` (read after write); layouts as in `recompute.gated_linear_torch`.
- `triton_attention(q, k, v, *, causal, window, prefix, sinks, alibi_slopes, scale)`
  -> o ``[B, T, H, D]``.

Forward: the generated kernel (one module per distinct `KernelSpec`, emitted and loaded
once, then cached). Backward: attention uses generated flash-style backward kernels
(dk/dv and dq, from the forward's log-sum-exp); the gated-linear op (first version)
recomputes the forward with the equivalent differentiable torch expression of
`recompute` (chunked, O(T) memory) and differentiates it.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch

from archdsl.codegen.triton.emit import emit_triton_module
from archdsl.codegen.triton.loader import load_triton_module
from archdsl.codegen.triton.recompute import attention_torch, gated_linear_torch
from archdsl.codegen.triton.spec import AttentionFlags, GatedLinearFlags, KernelSpec

DEFAULT_CHUNK_SIZE = 64


# Kernels of a compiled package (`archdsl compile --backend triton`) register the module
# they were loaded from, so the ops run exactly that file's kernels.
_REGISTERED: dict[tuple[str, object], types.ModuleType] = {}


def register_module(module: types.ModuleType, specs: list[KernelSpec]) -> None:
    """Make `launcher_for` use `module` (an emitted package file) for these specs."""
    for spec in specs:
        _REGISTERED[(spec.name, spec.flags)] = module


def _module_for(spec: KernelSpec) -> types.ModuleType:
    registered = _REGISTERED.get((spec.name, spec.flags))
    return registered if registered is not None else _emitted_module(spec)


@functools.lru_cache(maxsize=128)
def _emitted_module(spec: KernelSpec) -> types.ModuleType:
    return load_triton_module(emit_triton_module([spec]), spec.name)


def launcher_for(spec: KernelSpec) -> Callable[..., Any]:
    """The launcher of ``spec``'s kernel, emitted and loaded on first use."""
    return getattr(_module_for(spec), spec.name)  # type: ignore[no-any-return]


def gated_linear_spec(
    *,
    has_decay: bool,
    decay_per_channel: bool,
    has_lr: bool,
    use_initial_state: bool,
    store_final_state: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> KernelSpec:
    """The `KernelSpec` the functional op uses for one combination of inputs."""
    flags = GatedLinearFlags(
        has_decay=has_decay,
        decay_per_channel=decay_per_channel,
        has_lr=has_lr,
        use_initial_state=use_initial_state,
        store_final_state=store_final_state,
        chunk_size=chunk_size,
    )
    name = (
        "gated_linear_"
        + "".join(
            "1" if f else "0"
            for f in (has_decay, decay_per_channel, has_lr, use_initial_state, store_final_state)
        )
        + f"_c{chunk_size}"
    )
    return KernelSpec("gated_linear", name, "archdsl.codegen.triton.ops", flags)


class TritonGatedLinear(torch.autograd.Function):
    """Generated-kernel forward, torch-recompute backward (see module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        log_decay: torch.Tensor | None,
        lr: torch.Tensor | None,
        scale: float,
        initial_state: torch.Tensor | None,
        output_final_state: bool,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spec = gated_linear_spec(
            has_decay=log_decay is not None,
            decay_per_channel=log_decay is not None and log_decay.dim() == 4,
            has_lr=lr is not None,
            use_initial_state=initial_state is not None,
            store_final_state=output_final_state,
            chunk_size=chunk_size,
        )
        o, final_state = launcher_for(spec)(q, k, v, log_decay, lr, scale, initial_state)
        ctx.save_for_backward(q, k, v, log_decay, lr, initial_state)
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        if final_state is None:
            final_state = q.new_empty(0)
        return o, final_state

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor | None, dht: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, log_decay, lr, initial_state = (_leaf(x) for x in ctx.saved_tensors)
        with torch.enable_grad():
            o, state = gated_linear_torch(
                _req(q), _req(k), _req(v), log_decay, lr, ctx.scale, initial_state, ctx.chunk_size
            )
            grads = _grads_of(
                [(o, do), (state, dht if dht is not None and dht.numel() else None)],
                [q, k, v, log_decay, lr, initial_state],
                ctx.needs_input_grad[:5] + (ctx.needs_input_grad[6],),  # [5] is scale
            )
        q_g, k_g, v_g, g_g, lr_g, h0_g = grads
        return q_g, k_g, v_g, g_g, lr_g, None, h0_g, None, None


def triton_gated_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    lr: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear memory on the generated kernel; returns ``(o, final_state or None)``.

    ``scale`` defaults to ``dk ** -0.5``; log_decay ``[B, T, H]`` or ``[B, T, H, dk]``
    (``<= 0``); the final state is float32 ``[B, H, dk, dv]``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, final_state = TritonGatedLinear.apply(
        q, k, v, log_decay, lr, float(scale), initial_state, output_final_state, chunk_size
    )
    return o, (final_state if output_final_state else None)


class TritonAttention(torch.autograd.Function):
    """Generated flash-style forward and backward kernels (masks as constexpr flags).

    ALiBi slopes are constants for the generated backward; when they require grad, the
    backward falls back to differentiating the materialised torch expression.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        flags: AttentionFlags,
        alibi_slopes: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        spec = attention_spec(flags)
        o, lse = launcher_for(spec)(q, k, v, alibi_slopes, scale, return_lse=True)
        ctx.save_for_backward(q, k, v, alibi_slopes, o, lse)
        ctx.spec = spec
        ctx.scale = scale
        return o  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, alibi_slopes, o, lse = ctx.saved_tensors
        if ctx.needs_input_grad[4]:
            return _attention_backward_torch(ctx, do)
        backward = getattr(_module_for(ctx.spec), ctx.spec.name + "_backward")
        dq, dk, dv = backward(q, k, v, o, lse, do, alibi_slopes, ctx.scale)
        return dq, dk, dv, None, None, None


def _attention_backward_torch(ctx: Any, do: torch.Tensor) -> tuple[Any, ...]:
    """Backward through the materialised torch expression (used when slopes need grad)."""
    q, k, v, alibi_slopes = (_leaf(x) for x in ctx.saved_tensors[:4])
    with torch.enable_grad():
        o = attention_torch(_req(q), _req(k), _req(v), ctx.spec.flags, alibi_slopes, ctx.scale)
        grads = _grads_of(
            [(o, do)],
            [q, k, v, alibi_slopes],
            ctx.needs_input_grad[:3] + (ctx.needs_input_grad[4],),  # [3] is flags
        )
    q_g, k_g, v_g, slopes_g = grads
    return q_g, k_g, v_g, None, slopes_g, None


def attention_spec(flags: AttentionFlags) -> KernelSpec:
    """The `KernelSpec` the functional op uses for one mask combination."""
    return KernelSpec(
        "attention", attention_kernel_name(flags), "archdsl.codegen.triton.ops", flags
    )


def attention_kernel_name(flags: AttentionFlags) -> str:
    """A deterministic identifier for one attention flag combination."""
    scale = "d" if flags.scale is None else format(flags.scale, ".6e").replace(".", "p")
    scale = scale.replace("-", "m").replace("+", "")
    return (
        f"attention_c{int(flags.is_causal)}_w{flags.window}_p{flags.prefix}"
        f"_s{flags.sinks}_a{int(flags.has_alibi)}_{scale}"
    )


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    window: int = 0,
    prefix: int = 0,
    sinks: int = 0,
    alibi_slopes: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention on the generated kernel; q, k, v ``[B, T, H, D]`` -> ``[B, T, H, D]``.

    Masks as in `AttentionFlags`; ``alibi_slopes`` ``[H]`` adds ``-slope_h |i - j|``;
    ``scale`` defaults to ``D ** -0.5``.
    """
    flags = AttentionFlags(
        is_causal=bool(causal),
        window=int(window),
        prefix=int(prefix),
        sinks=int(sinks),
        has_alibi=alibi_slopes is not None,
    )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    out: torch.Tensor = TritonAttention.apply(q, k, v, flags, alibi_slopes, float(scale))
    return out


def _grads_of(
    pairs: list[tuple[torch.Tensor, torch.Tensor | None]],
    leaves: list[torch.Tensor | None],
    needed: tuple[bool, ...],
) -> list[torch.Tensor | None]:
    """Gradients of sum(<output, grad_output>) w.r.t. the leaves that need them."""
    outputs = [out for out, g in pairs if g is not None]
    grad_outputs = [g for _, g in pairs if g is not None]
    wanted = [i for i, leaf in enumerate(leaves) if leaf is not None and needed[i]]
    result: list[torch.Tensor | None] = [None] * len(leaves)
    if not outputs or not wanted:
        return result
    inputs = [_req(leaves[i]) for i in wanted]
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def _leaf(x: torch.Tensor | None) -> torch.Tensor | None:
    """A fresh autograd leaf with the value of a saved tensor (None stays None)."""
    return None if x is None else x.detach().requires_grad_(True)


def _req(x: torch.Tensor | None) -> torch.Tensor:
    """``x``, known to be present (a required input)."""
    assert x is not None
    return x
