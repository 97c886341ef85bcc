"""Lowering: a table of rules maps each mixer of the IR to an algorithm (the plan).

A rule matches a family of mixers and returns a `MixerPlan`, or None when it does not
apply. Memories defer to their own table (`archdsl.memory.rules`). The plan is what
`archdsl info` shows and what code generation reads.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Arch, Mixer
from archdsl.memory.rules import select_rule


class MixerPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    algorithm: str
    triton_kernel: str | None = None  # name of the generated Triton entry point, if any
    fallback: bool = False  # True: no fast rule matched, the reference runs


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    ir_hash: str
    backend: str
    mixers: tuple[MixerPlan, ...]


MATRIX_ALGORITHMS = {
    "dense": "dense matmul (fixed T)",
    "attention": "softmax attention (sdpa)",
    "lowrank": "chunked linear attention",
    "toeplitz": "FFT long convolution",
    "vandermonde": "Vandermonde kernel + FFT convolution (S4D)",
    "cauchy": "Cauchy kernel (S4 DPLR) / chunked Cauchy mixer",
    "semiseparable": "chunked SSD scan",
    "quasiseparable": "one scan over [x ; flip x], shift + diagonal (Hydra)",
}


def _memory_rule(m: Mixer, backend: str) -> MixerPlan | None:
    if not isinstance(m, Memory):
        return None
    rule = select_rule(m)
    if rule is None:
        return MixerPlan(
            name=m.name, kind="memory", algorithm="reference token loop (no rule)", fallback=True
        )
    kernel = (
        f"memory_{m.name}" if backend == "triton" and rule.name == "chunked_gated_linear" else None
    )
    return MixerPlan(name=m.name, kind="memory", algorithm=rule.name, triton_kernel=kernel)


def _attention_rule(m: Mixer, backend: str) -> MixerPlan | None:
    if not isinstance(m, Attention):
        return None
    masks = [
        n
        for n, on in (
            ("causal", m.causal),
            ("window", m.window),
            ("prefix", m.prefix),
            ("sinks", m.sinks),
            ("persistent", m.persistent),
        )
        if on
    ]
    kernel = f"attention_{m.name}" if backend == "triton" and m.pos in ("rope", "none") else None
    algo = "flash attention" + (f" [{', '.join(masks)}]" if masks else "") + f", pos={m.pos}"
    return MixerPlan(name=m.name, kind="attention", algorithm=algo, triton_kernel=kernel)


def _matrix_rule(m: Mixer, backend: str) -> MixerPlan | None:
    if not isinstance(m, MatrixMixer):
        return None
    params = "data-dependent" if m.data else "fixed"
    algo = f"{m.cls}: {MATRIX_ALGORITHMS[m.cls]}, {m.direction}, {params}"
    return MixerPlan(name=m.name, kind="matrix", algorithm=algo)


def _conv_rule(m: Mixer, backend: str) -> MixerPlan | None:
    if not isinstance(m, Conv):
        return None
    return MixerPlan(
        name=m.name,
        kind="conv",
        algorithm=f"depthwise conv1d (k={m.kernel}, {'causal' if m.causal else 'centred'})",
    )


MIXER_RULES: tuple[Callable[[Mixer, str], MixerPlan | None], ...] = (
    _memory_rule,
    _attention_rule,
    _matrix_rule,
    _conv_rule,
)


def plan_mixer(m: Mixer, backend: str) -> MixerPlan:
    for rule in MIXER_RULES:
        plan = rule(m, backend)
        if plan is not None:
            return plan
    raise AssertionError(f"no lowering rule for {type(m).__name__}")  # pragma: no cover


def lower(arch: Arch, ir_hash: str, backend: str = "torch") -> Plan:
    return Plan(
        arch=arch.name,
        ir_hash=ir_hash,
        backend=backend,
        mixers=tuple(plan_mixer(m, backend) for m in arch.mixers),
    )


def dump_plan(plan: Plan) -> str:
    lines = [f"plan {plan.arch} (ir {plan.ir_hash}, backend {plan.backend})"]
    for m in plan.mixers:
        kernel = f"  triton: {m.triton_kernel}" if m.triton_kernel else ""
        flag = "  [FALLBACK to reference]" if m.fallback else ""
        lines.append(f"  {m.kind:<9} {m.name:<16} -> {m.algorithm}{kernel}{flag}")
    return "\n".join(lines) + "\n"
