"""The compile / build / core entry points (imported lazily by `archdsl`).

Compiling (lowering + code generation) needs no torch; building and running do.
"""

from __future__ import annotations

import hashlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archdsl.codegen.torch_module import emit_torch_module
from archdsl.errors import ArchError
from archdsl.frontend.evaluate import Value
from archdsl.ir.memory import Memory
from archdsl.ir.mixers import MatrixMixer
from archdsl.ir.spec import Arch
from archdsl.lower.plan import Plan, lower
from archdsl.spec import Spec, from_ir, load

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Compiled:
    """The generated package for one spec: file name -> text, plus the plan."""

    spec: Spec
    plan: Plan
    files: dict[str, str]

    def build(self) -> nn.Module:
        module = load_module(self.files["model.py"], f"archdsl_gen_{self.spec.ir_hash()}")
        kernels = None
        if self.plan.backend == "triton" and "kernels_triton.py" in self.files:
            kernels = load_kernels(self.files["kernels_triton.py"], self.plan, self.spec.ir)
        return module.build(self.plan.backend, kernels)  # type: ignore[no-any-return]


def as_spec(spec_or_path: Spec | Arch | str | Path, **overrides: Value) -> Spec:
    if isinstance(spec_or_path, Spec):
        return spec_or_path.with_params(**overrides)
    if isinstance(spec_or_path, Arch):
        if overrides:
            raise ArchError(
                "parameter overrides need a spec file; rebuild the IR with new values instead"
            )
        return from_ir(spec_or_path)
    return load(spec_or_path, **overrides)


_CACHE: dict[tuple[str, str], Compiled] = {}


def compile_spec(
    spec_or_path: Spec | Arch | str | Path, backend: str = "torch", **overrides: Value
) -> Compiled:
    """Lower and generate code for a spec; cached by the normalised IR's hash."""
    from archdsl.vocab import BACKENDS

    if backend not in BACKENDS:
        raise ArchError(
            f"unknown backend {backend!r}", None, f"choose one of: {', '.join(BACKENDS)}"
        )
    spec = as_spec(spec_or_path, **overrides)
    key = (spec.ir_hash(), backend)
    if key in _CACHE:
        return _CACHE[key]
    plan = lower(spec.ir, spec.ir_hash(), backend)
    files = {"model.py": emit_torch_module(spec.ir, spec.ir_hash(), Path(spec.path).name)}
    kernels = _emit_kernels(spec.ir, plan)
    if kernels is not None:
        files["kernels_triton.py"] = kernels
    compiled = Compiled(spec=spec, plan=plan, files=files)
    _CACHE[key] = compiled
    return compiled


def _emit_kernels(arch: Arch, plan: Plan) -> str | None:
    if plan.backend != "triton":
        return None
    from archdsl.codegen.triton_kernels import emit_kernels_for_plan

    return emit_kernels_for_plan(arch, plan)


def load_module(source: str, name: str) -> types.ModuleType:
    """Execute generated source (our own output, never user text) as a fresh module."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    mod_name = f"{name}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module = types.ModuleType(mod_name)
    code = compile(source, f"<archdsl generated {name}>", "exec")
    sys.modules[mod_name] = module
    exec(code, module.__dict__)  # noqa: S102 - source is archdsl's own generated code
    return module


def load_kernels(source: str, plan: Plan, arch: Arch) -> Any:
    from archdsl.codegen.triton_kernels import load_kernel_module

    return load_kernel_module(source, plan, arch)


def build(
    spec_or_path: Spec | Arch | str | Path, backend: str = "torch", **overrides: Value
) -> nn.Module:
    """An nn.Module for the spec. A language model maps ids [B, T] to logits [B, T, vocab].

    Parameters are overridden by name: ``build("specs/titans.arch", d_model=64, layers=2)``.
    """
    return compile_spec(spec_or_path, backend, **overrides).build()


def core(spec_or_path: Spec | Arch | str | Path, name: str, backend: str = "torch") -> Any:
    """The kernel-level functional core of the memory or mixer `name` of a spec."""
    spec = as_spec(spec_or_path)
    decl = spec.ir.mixer(name)
    if decl is None:
        names = ", ".join(m.name for m in spec.ir.mixers) or "none"
        raise ArchError(
            f"spec '{spec.name}' has no memory or mixer `{name}`", None, f"its mixers: {names}"
        )
    if isinstance(decl, Memory):
        from archdsl.memory.core import core_for_memory

        return core_for_memory(decl, backend)
    if isinstance(decl, MatrixMixer):
        from archdsl.mixers.core import core_for_mixer

        return core_for_mixer(decl, backend)
    raise ArchError(
        f"`{name}` is a {type(decl).__name__.lower()} mixer; "
        "`core` covers memories and matrix mixers"
    )
