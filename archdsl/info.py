"""`archdsl info`: parameter count, per-mixer state size, lowering and FLOPs per token.

Parameters are counted on a model built on the `meta` device (no memory, no init cost).
State sizes and FLOPs are analytic estimates from the IR (documented per mixer kind);
FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from archdsl.frontend.evaluate import Value
from archdsl.graph.build import calls_in, stage_blocks
from archdsl.ir.memory import Memory
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Arch, BlockRef, Mixer, Repeat, Stage
from archdsl.lower.plan import lower


@dataclass(frozen=True)
class StateSize:
    per_token: int  # floats that grow with each token (KV cache)
    per_sequence: int  # floats of constant-size recurrent state
    note: str = ""


def _head_dims(m: Memory, arch: Arch) -> tuple[int, int, int]:
    h = arch.heads
    dk = m.features.dk or arch.d_model // h
    dv = m.features.dv or arch.d_model // h
    return h, dk, dv


def memory_weights(m: Memory, arch: Arch) -> int:
    h, dk, dv = _head_dims(m, arch)
    if m.structure.kind == "vector":
        return h * dk
    if m.structure.kind == "matrix":
        return h * dk * dv
    hidden = round(m.structure.expand * dk)
    dims = [dk] + [hidden] * (m.structure.depth - 1) + [dv]
    return h * sum(a * b for a, b in zip(dims, dims[1:]))


def state_size(m: Mixer, arch: Arch) -> StateSize:
    d = arch.d_model
    if isinstance(m, Memory):
        w = memory_weights(m, arch)
        total = w * (2 if m.learner.kind == "momentum" else 1)
        conv = 3 * d * max(m.features.conv - 1, 0)
        note = (
            "weights"
            + (" + momentum" if m.learner.kind == "momentum" else "")
            + (" + conv buffers" if conv else "")
        )
        return StateSize(0, total + conv, note)
    if isinstance(m, Attention):
        heads = m.heads or arch.heads
        kv = (m.kv_heads or heads) * (d // heads)
        if m.window:
            return StateSize(
                0, 2 * kv * (m.window + m.persistent), f"KV cache capped at window {m.window}"
            )
        return StateSize(2 * kv, 2 * kv * m.persistent, "KV cache")
    if isinstance(m, Conv):
        return StateSize(0, d * (m.kernel - 1), "conv buffer")
    assert isinstance(m, MatrixMixer)
    inner = int(m.expand * d)
    if (
        m.direction == "bidirectional"
        or m.cls in ("dense", "attention", "cauchy")
        or (m.cls == "toeplitz" and not m.data)
    ):
        return StateSize(inner, 0, "needs the whole sequence (no recurrent form)")
    if m.cls == "lowrank":
        return StateSize(0, inner * m.headdim, "linear-attention state")
    return StateSize(0, inner * m.state, "SSM state")


def mixer_flops_per_token(m: Mixer, arch: Arch, context: int) -> float:
    """Sequence-mixing FLOPs per token beyond the projections (counted via parameters)."""
    d = arch.d_model
    if isinstance(m, Attention):
        span = min(m.window, context) if m.window else context / 2 if m.causal else context
        return 4.0 * d * (span + m.persistent)
    if isinstance(m, Memory):
        w = memory_weights(m, arch)
        # read + gradient + write: about 3 passes over the weights, x2 for momentum.
        return 2.0 * w * (3 + (1 if m.learner.kind == "momentum" else 0)) * m.learner.n
    if isinstance(m, Conv):
        return 2.0 * d * m.kernel
    assert isinstance(m, MatrixMixer)
    inner = int(m.expand * d)
    if m.cls in ("dense", "attention", "cauchy"):
        return 2.0 * inner * context
    if m.cls in ("toeplitz", "vandermonde"):
        import math

        return 10.0 * inner * math.log2(max(context, 2))
    return 6.0 * inner * m.state * (2 if m.direction == "bidirectional" else 1)


def mixer_uses(arch: Arch) -> Counter[str]:
    """How many times each mixer runs in one forward pass of the model."""
    uses: Counter[str] = Counter()

    def block_uses(name: str, times: int) -> None:
        block = arch.block(name)
        assert block is not None
        for stmt in block.body:
            for call in calls_in(stmt.value):
                if arch.mixer(call.func) is not None:
                    uses[call.func] += times
                elif arch.block(call.func) is not None:
                    block_uses(call.func, times)

    def stages(items: tuple[Stage, ...], times: int) -> None:
        for s in items:
            if isinstance(s, BlockRef):
                block_uses(s.block, times)
            elif isinstance(s, Repeat):
                stages(s.body, times * s.n)

    if arch.model is not None:
        stages(arch.model.stages, 1)
    else:
        for b in arch.blocks:
            block_uses(b.name, 1)
    return uses


def count_parameters(path: str, overrides: dict[str, Value]) -> tuple[int, int]:
    """(total, embedding) parameter counts, counted on the meta device."""
    import torch

    from archdsl.api import build

    try:
        with torch.device("meta"):
            model = build(path, "torch", **overrides)
    except Exception:  # noqa: BLE001 - some init code needs real tensors: count on CPU
        model = build(path, "torch", **overrides)
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embedding."))
    return total, emb


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def spec_info(path: str, context: int, overrides: dict[str, Value]) -> str:
    from archdsl.spec import load

    spec = load(path, **overrides)
    arch = spec.ir
    plan = {m.name: m for m in lower(arch, spec.ir_hash()).mixers}
    total, emb = count_parameters(path, overrides)
    uses = mixer_uses(arch)
    lines = [
        f"{arch.name} ({path}, ir {spec.ir_hash()})",
        "  parameters: " + ", ".join(f"{p.name} = {p.value}" for p in arch.params),
        f"  weights: {total:,} ({_human(total)}), of which embedding {emb:,}",
        f"  blocks per forward: {len(stage_blocks(arch.model.stages)) if arch.model else 0} "
        "distinct, "
        f"mixer calls: {sum(uses.values())}",
        "",
        f"  {'mixer':<14} {'kind':<10} {'calls':>5} {'state/token':>12} {'state/seq':>12}"
        "  lowering",
    ]
    seq_total, tok_total, mix_flops = 0, 0, 0.0
    for m in arch.mixers:
        s = state_size(m, arch)
        n = uses.get(m.name, 0)
        seq_total += n * s.per_sequence
        tok_total += n * s.per_token
        mix_flops += n * mixer_flops_per_token(m, arch, context)
        kind = plan[m.name].kind
        lines.append(
            f"  {m.name:<14} {kind:<10} {n:>5} "
            f"{_human(s.per_token):>12} {_human(s.per_sequence):>12}"
            f"  {plan[m.name].algorithm}" + (" [FALLBACK]" if plan[m.name].fallback else "")
        )
        if s.note:
            lines.append(f"  {'':<14} {'':<10} {'':>5} {'':>12} {'':>12}  ({s.note})")
    dense = 2.0 * (total - emb)
    lines += [
        "",
        f"  state (floats, whole model): {_human(tok_total)} per token "
        f"+ {_human(seq_total)} per sequence",
        f"  FLOPs per token at context {context}: {_human(dense + mix_flops)} "
        f"(weights {_human(dense)}, sequence mixing {_human(mix_flops)})",
    ]
    return "\n".join(lines) + "\n"
