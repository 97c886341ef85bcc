"""Chunked delta rule (l2 bias, matrix memory, decay before), in the WY / UT form.

Recurrence (state ``W [B, H, dk, dv]``, read after write, decay first, then one gradient
step of ``1/2 ||W^T k - v||^2`` at the decayed state)::

    W'_t = D_t W_{t-1}                     D_t = alpha_t I (per head) or diag(alpha_t)
    W_t  = W'_t - a_t (k_t^T W'_t - v_t^T)  a_t = lr_t k_t   (lr per key channel: lr_t * k_t)
    o_t  = (scale q_t) @ W_t

Per head this is the gated delta rule ``W_t = alpha_t (I - lr k k^T) W_{t-1} + lr k v^T``;
per channel the RWKV-7-like ``W_t = (I - lr k k^T) diag(alpha_t) W_{t-1} + lr k v^T``.
Learners: ``gd``; ``implicit`` (Longhorn: the closed-form minimiser of the step, which is
gd with ``lr / (1 + lr ||k||^2)``; per channel ``lr / (1 + sum_d lr_d k_d^2)``);
``steps(n)`` (n gd steps per token on the same (k, v), decay before the first: computed
as a sequence of ``T n`` sub-tokens, each token repeated n times, decay on the first copy,
read on the last).

Chunked form. Write ``e_t = v_t - W'_t^T k_t`` (the error at the decayed state); then
``W_t = D_t W_{t-1} + a_t e_t^T`` is a gated linear recurrence with values ``e``. Inside a
chunk with start state S and cumulative log decay ``b`` (``gamma = exp(b)``)::

    e_t = v_t - S^T (gamma_t k_t) - sum_{s < t} A_ts e_s,   A_ts = k_t . (exp(b_t - b_s) a_s)

so ``(I + A) E = V - (gamma K) S`` and, with the unit lower-triangular solve done once for
all chunks, ``E = U - Wk S`` where ``U = (I + A)^-1 V`` and ``Wk = (I + A)^-1 (gamma K)``.
Only ``E_n = U_n - Wk_n S_n`` and ``S_{n+1} = exp(b_C) S_n + (exp(b_C - b) a)^T E_n`` run in
a Python loop over chunks; outputs ``O = (gamma Q) S + P E`` with
``P_ts = q_t . (exp(b_t - b_s) a_s)`` (``s <= t``) are batched. The decayed scores A and P
come from `archdsl.memory.chunked_linear.decayed_scores` (stable for strong per-channel
decays: no exponential of a positive number is ever formed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archdsl.ir.memory import Memory
from archdsl.memory.chunked_linear import (
    DEFAULT_CHUNK,
    decay_factor,
    decayed_scores,
    head_or_channel,
    initial_weights,
    to_chunks,
)
from archdsl.memory.inputs import prepare_inputs
from archdsl.memory.state import MemoryState


def effective_rate(mem: Memory, k: Tensor, lr: Tensor) -> Tensor:
    """The gd step size of each token: ``lr`` (gd, steps) or Longhorn's ``lr / (1 + lr |k|^2)``.

    k ``[B, T, H, dk]``; lr ``[B, T, H, 1]`` (the implicit learner is defined per head) or,
    for gd and steps, ``[B, T, H, dk]``.
    """
    if mem.learner.kind != "implicit":
        return lr
    if lr.shape[-1] != 1:
        raise ValueError(f"memory '{mem.name}': the implicit learner needs a per-head lr")
    return lr / (1.0 + lr * (k * k).sum(-1, keepdim=True))


def repeat_tokens(x: Tensor, n: int) -> Tensor:
    """Each token repeated ``n`` times along T: ``[B, T, ...]`` -> ``[B, T n, ...]``."""
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def decay_first_copy(log_alpha: Tensor | None, n: int) -> Tensor | None:
    """`repeat_tokens` for the log decay: only the first copy keeps it, the others get 0.

    The memory forgets once per token, then takes its ``n`` steps.
    """
    if log_alpha is None or n == 1:
        return log_alpha
    rest = log_alpha.new_zeros(1).expand(*log_alpha.shape[:2], n - 1, *log_alpha.shape[2:])
    copies = torch.cat([log_alpha.unsqueeze(2), rest], dim=2)
    return copies.reshape(log_alpha.shape[0], -1, *log_alpha.shape[2:])


def delta_rule_chunks(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor | None, s0: Tensor
) -> tuple[Tensor, Tensor]:
    """The delta rule on chunked inputs. Returns ``(o [B, H, N, C, dv], final_state)``.

    q, k, a (the write vectors ``lr k``) ``[B, H, N, C, dk]``, q already scaled; v
    ``[B, H, N, C, dv]``; b the cumulative log decay within each chunk, ``[B, H, N, C]``,
    ``[B, H, N, C, dk]`` or None; s0 ``[B, H, dk, dv]``.
    """
    dv = v.shape[-1]
    strict = decayed_scores(k, a, b, strict=True)
    reads = decayed_scores(q, a, b, strict=False)
    if b is None:
        q_in, k_in, a_out, chunk_decay = q, k, a, None
    else:
        bk = b if b.dim() == q.dim() else b.unsqueeze(-1)
        b_last = bk[..., -1:, :]
        gamma = decay_factor(bk)
        q_in, k_in = q * gamma, k * gamma
        a_out = a * decay_factor(b_last - bk)
        chunk_decay = decay_factor(b_last).transpose(-1, -2)  # [B, H, N, dk or 1, 1]
    # unit lower-triangular: the diagonal of I + A is 1, A itself is strictly lower
    solved = torch.linalg.solve_triangular(
        strict, torch.cat([v, k_in], dim=-1), upper=False, unitriangular=True
    )
    u, wk = solved[..., :dv], solved[..., dv:]
    n_chunks = q.shape[2]
    decays = chunk_decay.unbind(2) if chunk_decay is not None else [None] * n_chunks
    # unbind, not indexing: see chunked_linear._chunk_start_states
    per_chunk = zip(u.unbind(2), wk.unbind(2), a_out.transpose(-1, -2).unbind(2), decays)
    state = s0
    starts, errors = [], []
    for u_n, wk_n, a_n, decay_n in per_chunk:
        starts.append(state)
        err = u_n - wk_n @ state
        errors.append(err)
        kept = state if decay_n is None else state * decay_n
        state = kept + a_n @ err
    o = q_in @ torch.stack(starts, dim=2) + reads @ torch.stack(errors, dim=2)
    return o, state


def chunked_delta_rule(
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
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor, MemoryState | None]:
    """Delta-rule memory (l2 bias, matrix, decay before; gd / implicit / steps), chunked.

    q, k ``[B, T, H, dk]``; v ``[B, T, H, dv]``; lr ``[B, T, H]`` or a float (gd and steps
    also take ``[B, T, H, dk]``, a per-channel step); decay = log alpha ``<= 0``,
    ``[B, T, H]`` (gated delta rule) or ``[B, T, H, dk]`` (RWKV-7-like), given exactly when
    the retention is ``decay``. Arguments are checked and normalised (scale, gate shapes) by
    `archdsl.memory.inputs.prepare_inputs`, as for the reference. State ``W [B, H, dk, dv]``;
    ``initial_state`` a MemoryState ``(W,)`` or the tensor. Returns ``o [B, T, H, dv]``
    and ``MemoryState((W,))`` when ``output_final_state``. ``chunk`` changes only speed
    (a power of two when the decay is per channel).

    >>> from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
    >>> mem = Memory(name="dn", structure=Structure(kind="matrix"), bias=Bias(kind="l2"),
    ...              retention=Retention(kind="none"),
    ...              learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)))
    >>> k = torch.tensor([1.0, 0.0]).expand(1, 2, 1, 2)  # the same unit key twice
    >>> v = torch.tensor([[[[3.0]]], [[[5.0]]]]).transpose(0, 1)
    >>> o, _ = chunked_delta_rule(mem, k, k, v, lr=torch.ones(1, 2, 1), scale=1.0)
    >>> o.flatten().tolist()  # lr = 1, |k| = 1: each write replaces the stored value
    [3.0, 5.0]
    """
    if mem.structure.kind != "matrix" or mem.learner.kind not in ("gd", "implicit", "steps"):
        raise ValueError(
            f"chunked_delta_rule: needs a matrix memory with a gd, implicit or steps learner, "
            f"got {mem.structure.kind} / {mem.learner.kind}"
        )
    x = prepare_inputs(
        mem, q, k, v, lr=lr, decay=decay, momentum=momentum, delta=delta, scale=scale
    )
    bsz, t, h, dk = x.q.shape
    steps = mem.learner.n if mem.learner.kind == "steps" else 1
    writes = x.k * effective_rate(mem, x.k, x.lr)
    q, k, v, a = (repeat_tokens(y, steps) for y in (x.q, x.k, x.v, writes))
    log_alpha = decay_first_copy(head_or_channel(x.log_alpha), steps)
    s0 = initial_weights(initial_state)
    if s0 is None:
        s0 = q.new_zeros(bsz, h, dk, v.shape[-1])
    b = None if log_alpha is None else to_chunks(log_alpha, chunk).cumsum(dim=3)
    qc, kc, vc, ac = (to_chunks(y, chunk) for y in (q, k, v, a))
    o, final = delta_rule_chunks(qc, kc, vc, ac, b, s0)
    # drop the padding, then read each token on its last copy
    o = o.reshape(bsz, h, -1, o.shape[-1])[:, :, : t * steps]
    o = o.reshape(bsz, h, t, steps, -1)[..., -1, :].transpose(1, 2).contiguous()
    return o, (MemoryState((final,)) if output_final_state else None)
