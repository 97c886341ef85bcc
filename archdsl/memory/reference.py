"""The definitional semantics of a Miras memory (DESIGN.md 1.1), token by token.

This is the slow, obviously-correct path every fast path is tested against. Inner
gradients come from ``torch.func.grad`` of the loss in `archdsl.memory.inner`
(vmapped over batch and heads), so a new bias or structure needs no hand derivation,
and the whole computation is differentiable end to end (outer autograd flows through
the inner gradients to q, k, v, the gates and the initial state).

Semantics, for mini-batch size b (``Memory.batch``), chunks of b tokens counted from the
start of the sequence, W0 the state at the start of the current chunk:

- gradient point P_t: b > 1: W0 (so ``when`` = before / after coincide); b = 1:
  ``alpha_t W_{t-1}`` for retention decay ``before`` (forget, then write), else ``W_{t-1}``
  (Titans' ``after``; also lq / kl / elastic, whose papers take the gradient at W_{t-1});
- learner: gd ``Delta = -lr g(P)``; momentum ``S = beta S - lr g(P)``, ``Delta = S``;
  implicit (Longhorn, matrix memory + l2, b = 1, lr per head)
  ``Delta = eps k (v - P^T k)^T`` with ``eps = lr / (1 + lr ||k||^2)``; steps(n): n GD
  steps from P on the same (k, v), ``Delta = P_n - P`` (b = 1);
- state: ``W_t = alpha_t W_{t-1} + Delta`` (alpha = exp(decay), 1 when there is no decay;
  per-channel gates scale the key rows of W), then by retention:
  elastic: ``W_t = S_gamma(lambda W_t)`` every token (`inner.elastic_coefficients`);
  lq (Moneta): the accumulator follows the same linear rule, ``A_t = alpha_t A_{t-1} +
  Delta``, and at each chunk end ``W = A / ||A||_q^(q-2)`` (entrywise q-norm per weight);
  kl (Memora): the log accumulator ``L_t = alpha_t L_{t-1} + Delta`` (L = log W at every
  chunk end) and at each chunk end ``W = softmax(L)`` over each weight's input axis.
  Choice for lq / kl: inside a chunk the read weights follow the linear (Titans-decay) form
  from W0, and the normalisation / softmax is applied at the chunk's last token only; for
  b = 1 this is exactly ``W_t = A_t/||A_t||^(q-2)`` and ``W_t = softmax(alpha log W_{t-1} -
  eta g)``. Memora's constant c is 1; its W0 must be positive (L starts at log W0).
- read after write: ``o_t = M_{W_t}(scale q_t)``.

The last chunk of a call may be partial: its chunk-start weights travel in the final
state (`archdsl.memory.carry`), so a split anywhere continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vmap

from archdsl.ir.memory import Memory
from archdsl.memory.carry import Carry, final_state, initial_carry
from archdsl.memory.inner import (
    bias_loss,
    elastic_coefficients,
    kl_log_project,
    lq_normalise,
    memory_forward,
    soft_threshold,
)
from archdsl.memory.inputs import MemoryInputs, prepare_inputs
from archdsl.memory.state import MemoryState

Weights = tuple[Tensor, ...]
GradFn = Callable[[Weights, Tensor, Tensor, Tensor], Weights]


def memory_reference(
    mem: Memory,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    lr: Tensor | float,
    decay: Tensor | None = None,
    momentum: Tensor | float | None = None,
    delta: Tensor | float | None = None,
    scale: float | None = None,
    initial_state: MemoryState | Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, MemoryState | None]:
    """Run `mem` over the sequence token by token; o ``[B, T, H, dv]``.

    Gates follow rules.py: lr ``[B, T, H]`` / ``[B, T, H, dk]`` or a float; decay = log alpha
    (same shapes); momentum ``[B, T, H]`` or a float; delta (Huber) ``[B, T, H]`` or a float.
    ``initial_state``: a MemoryState, or for the matrix memory a ``[B, H, dk, dv]`` tensor;
    required for mlp memories (their W0). Returns (o, final MemoryState or None).
    """
    check_learner(mem, lr)
    x = prepare_inputs(
        mem, q, k, v, lr=lr, decay=decay, momentum=momentum, delta=delta, scale=scale
    )
    carry = initial_carry(mem, initial_state, x.q, x.v)
    o = run_token_loop(mem, x, carry, token_grad_fn(mem))
    return o, final_state(carry) if output_final_state else None


def run_token_loop(mem: Memory, x: MemoryInputs, carry: Carry, grad_fn: GradFn) -> Tensor:
    """The token loop of the semantics above, advancing ``carry`` in place; o [B, T, H, dv].

    ``grad_fn`` gives the inner gradients (torch.func here; the fast path passes its
    hand-written ones for the combinations it runs token by token)."""
    outs = []
    for t in range(x.q.shape[1]):
        if carry.offset == 0:
            carry.chunk_start = list(carry.weights)
        _write_token(mem, carry, x, t, grad_fn)
        carry.offset += 1
        if carry.offset == mem.batch:
            end_chunk(mem, carry)
        outs.append(memory_forward(mem.structure, tuple(carry.weights), x.q[:, t]))
    return torch.stack(outs, dim=1)


def check_learner(mem: Memory, lr: Tensor | float) -> None:
    """Reject learner combinations that have no definition here, with the reason."""
    kind = mem.learner.kind
    if kind in ("implicit", "steps") and mem.batch > 1:
        raise ValueError(f"memory '{mem.name}': learner '{kind}' is defined for batch = 1 only")
    if kind != "implicit":
        return
    if mem.structure.kind != "matrix" or mem.bias.kind != "l2":
        raise ValueError(
            f"memory '{mem.name}': the implicit learner (Longhorn closed form) needs a matrix "
            "memory with the l2 bias; use gd or steps(n) otherwise"
        )
    if isinstance(lr, Tensor) and lr.dim() == 4:
        raise ValueError(f"memory '{mem.name}': the implicit learner needs a per-head lr")


def token_grad_fn(mem: Memory) -> GradFn:
    """(weights [B,H,...], k [B,H,dk], v [B,H,dv], delta [B,H]) -> dl/dW per weight."""

    def loss(weights: Weights, k: Tensor, v: Tensor, delta: Tensor) -> Tensor:
        return bias_loss(mem.bias, memory_forward(mem.structure, weights, k), v, delta)

    return vmap(vmap(grad(loss)))  # type: ignore[no-any-return]


def on_weight(gate: Tensor, w: Tensor) -> Tensor:
    """A gate ``[B, H, 1 or dk]`` broadcast onto a weight ``[B, H, dk]`` or ``[B, H, d, e]``."""
    return gate if w.dim() == gate.dim() else gate.unsqueeze(-1)


def _scaled(gate: Tensor | None, ws: list[Tensor]) -> list[Tensor]:
    return list(ws) if gate is None else [on_weight(gate, w) * w for w in ws]


def _gradient_point(mem: Memory, carry: Carry, alpha: Tensor | None) -> list[Tensor]:
    if mem.batch > 1:
        assert carry.chunk_start is not None
        return list(carry.chunk_start)
    if mem.retention.kind == "decay" and mem.retention.when == "before":
        return _scaled(alpha, carry.weights)
    return list(carry.weights)


def _write_token(mem: Memory, carry: Carry, x: MemoryInputs, t: int, grad_fn: GradFn) -> None:
    alpha = torch.exp(x.log_alpha[:, t]) if x.log_alpha is not None else None
    lr = x.lr[:, t]
    point = _gradient_point(mem, carry, alpha)
    step = _learner_step(mem, carry, x, t, point, grad_fn)
    new = [a + d for a, d in zip(_scaled(alpha, carry.weights), step)]
    if mem.retention.kind == "elastic":
        lam, gamma = elastic_coefficients(lr, mem.retention.l1, mem.retention.l2)
        new = [soft_threshold(on_weight(lam, w) * w, on_weight(gamma, w)) for w in new]
    if carry.acc is not None:
        carry.acc = [a + d for a, d in zip(_scaled(alpha, carry.acc), step)]
    carry.weights = new


def _learner_step(
    mem: Memory, carry: Carry, x: MemoryInputs, t: int, point: list[Tensor], grad_fn: GradFn
) -> list[Tensor]:
    """Delta_t of the learner, at gradient point ``point``."""
    lr, k_t, v_t, d_t = x.lr[:, t], x.k[:, t], x.v[:, t], x.delta[:, t]
    kind = mem.learner.kind
    if kind == "implicit":
        w = point[0]
        err = v_t - (k_t.unsqueeze(-2) @ w).squeeze(-2)
        eps = lr / (1.0 + lr * (k_t * k_t).sum(-1, keepdim=True))
        return [eps.unsqueeze(-1) * k_t.unsqueeze(-1) * err.unsqueeze(-2)]
    if kind == "steps":
        w_n = list(point)
        for _ in range(mem.learner.n):
            g = grad_fn(tuple(w_n), k_t, v_t, d_t)
            w_n = [w - on_weight(lr, w) * gi for w, gi in zip(w_n, g)]
        return [a - b for a, b in zip(w_n, point)]
    g = grad_fn(tuple(point), k_t, v_t, d_t)
    step = [-on_weight(lr, gi) * gi for gi in g]
    if kind == "gd":
        return step
    assert carry.momentum is not None and x.momentum is not None
    beta = x.momentum[:, t]
    carry.momentum = [on_weight(beta, s) * s + d for s, d in zip(carry.momentum, step)]
    return list(carry.momentum)


def end_chunk(mem: Memory, carry: Carry) -> None:
    """Chunk end: Moneta's normalisation / Memora's softmax; the next chunk starts here."""
    carry.offset = 0
    carry.chunk_start = None
    if carry.acc is None:
        return
    if mem.retention.kind == "lq":
        carry.weights = [lq_normalise(mem.structure, a, mem.retention.q) for a in carry.acc]
        return
    carry.acc = [kl_log_project(mem.structure, a) for a in carry.acc]
    carry.weights = [torch.exp(a) for a in carry.acc]
