"""The plan's Triton kernels: which generated kernels a compiled spec needs, one file.

`kernel_specs` reads the plan (mixers whose lowering has a Triton kernel) and the IR,
and returns the `KernelSpec`s (flags as constexpr); `emit_kernels_for_plan` writes them
as one deterministic module; `load_kernel_module` loads that file and registers it, so
the autograd ops run exactly these kernels, and returns a namespace with one entry point
per mixer (`attention_<name>`, `memory_<name>`).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention
from archdsl.ir.spec import Arch
from archdsl.lower.plan import Plan


def _attention_flags(att: Attention) -> Any:
    from archdsl.codegen.triton.spec import AttentionFlags

    # Persistent tokens are prepended keys that every query sees: sinks of the kernel.
    p = att.persistent
    return AttentionFlags(
        is_causal=att.causal,
        window=att.window,
        prefix=p + att.prefix if att.prefix else 0,
        sinks=p + att.sinks,
        has_alibi=att.pos == "alibi",
    )


def _memory_specs(mem: Memory) -> list[Any]:
    from archdsl.codegen.triton.ops import gated_linear_spec

    has_decay = mem.retention.kind == "decay"
    per_channel = (
        has_decay and mem.retention.alpha is not None and mem.retention.alpha.per == "channel"
    )
    return [
        gated_linear_spec(
            has_decay=has_decay,
            decay_per_channel=per_channel,
            has_lr=True,
            use_initial_state=stateful,
            store_final_state=stateful,
        )
        for stateful in (False, True)
    ]


def kernel_specs(arch: Arch, plan: Plan) -> dict[str, list[Any]]:
    """Mixer name -> the kernel specs it needs (deterministic order)."""
    import dataclasses

    from archdsl.codegen.triton.ops import attention_spec

    out: dict[str, list[Any]] = {}
    for mp in plan.mixers:
        if mp.triton_kernel is None:
            continue
        decl = arch.mixer(mp.name)
        if isinstance(decl, Attention):
            specs = [attention_spec(_attention_flags(decl))]
        elif isinstance(decl, Memory):
            specs = _memory_specs(decl)
        else:
            continue
        loc = f" ({decl.loc})" if decl.loc is not None else ""
        origin = f"{arch.name}: mixer {mp.name}{loc}"
        out[mp.name] = [dataclasses.replace(s, origin=origin) for s in specs]
    return out


def emit_kernels_for_plan(arch: Arch, plan: Plan) -> str:
    from archdsl.codegen.triton.emit import emit_triton_module

    unique: dict[str, Any] = {}
    for specs in kernel_specs(arch, plan).values():
        for spec in specs:
            unique.setdefault(spec.name, spec)  # shared by mixers with the same flags
    return emit_triton_module([unique[n] for n in sorted(unique)])


def _entry_points(arch: Arch, plan: Plan) -> types.SimpleNamespace:
    from archdsl.runtime.triton_entry import attention_entry, memory_entry

    ns = types.SimpleNamespace()
    for name in kernel_specs(arch, plan):
        decl = arch.mixer(name)
        if isinstance(decl, Attention):
            setattr(ns, f"attention_{name}", attention_entry(decl))
        elif isinstance(decl, Memory):
            setattr(ns, f"memory_{name}", memory_entry(decl))
    return ns


def load_kernel_module(source: str, plan: Plan, arch: Arch | None = None) -> types.SimpleNamespace:
    """Load an emitted kernel file, register it for the ops, return the entry points."""
    from archdsl.codegen.triton.loader import load_triton_module
    from archdsl.codegen.triton.ops import register_module
    from archdsl.ir.spec import Arch as _Arch

    if arch is None:
        raise ValueError("load_kernel_module needs the architecture IR")
    assert isinstance(arch, _Arch)
    module = load_triton_module(source, f"archdsl_kernels_{plan.ir_hash}")
    specs = [s for group in kernel_specs(arch, plan).values() for s in group]
    register_module(module, specs)
    return _entry_points(arch, plan)


def load_kernel_file(path: Path, arch: Arch, backend: str = "triton") -> types.SimpleNamespace:
    """For a compiled package: load its kernels_triton.py next to its IR."""
    from archdsl.lower.plan import lower
    from archdsl.spec import ir_hash

    plan = lower(arch, ir_hash(arch), backend)
    return load_kernel_module(Path(path).read_text(), plan, arch)
