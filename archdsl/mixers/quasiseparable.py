"""Quasiseparable matrix mixer (Hydra): ``QS(x) = shift(SS(x)) + flip(shift(SS(flip x))) + D x``.

Parameters: the semiseparable ones of both directions (see
`archdsl.mixers.semiseparable`: ``c, b, log_a, lr`` and ``c_bw, b_bw, log_a_bw, lr_bw``,
each backward one defaulting to its forward one) and a free diagonal ``delta [B, T, H]``
(Hydra: ``fc_D(x) + D``, data-dependent). The matrix, with ``shift`` moving rows down
by one (so row ``i`` of the lower part uses ``c_{i-1}``)::

    i >  j:  m_ij = c_{i-1} . b_j * lr_j * exp(log_a_{j+1} + ... + log_a_{i-1})
    i == j:  m_ii = delta_i
    i <  j:  m_ij = c_bw_{i+1} . b_bw_j * lr_bw_j * exp(log_a_bw_{i+1} + ... + log_a_bw_{j-1})

Causal keeps the lower part and the diagonal. The bidirectional fast path is ONE chunked
scan over the batch concatenation ``[x ; flip(x)]``, as Hydra's implementation does.
"""

from __future__ import annotations

from torch import Tensor

from archdsl.mixers.ops import shift_right
from archdsl.mixers.semiseparable import (
    ScanParams,
    backward_params,
    lower_semiseparable,
    scan_both_directions,
    upper_semiseparable,
)
from archdsl.mixers.ssd import DEFAULT_CHUNK, chunked_ssd


def quasiseparable_mix(
    x: Tensor,
    *,
    c: Tensor,
    b: Tensor,
    log_a: Tensor,
    delta: Tensor,
    lr: Tensor | None = None,
    causal: bool = False,
    c_bw: Tensor | None = None,
    b_bw: Tensor | None = None,
    log_a_bw: Tensor | None = None,
    lr_bw: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Fast path for ``x [B, T, H, D]``; ``delta`` is ``[B, T, H]`` (or ``[1, T, H]``)."""
    diagonal = x * delta.unsqueeze(-1)
    fw = ScanParams(c, b, log_a, lr)
    if causal:
        y = chunked_ssd(c, b, x, log_decay=log_a, lr=lr, chunk_size=chunk_size)[0]
        return shift_right(y) + diagonal
    bw = backward_params(fw, c_bw, b_bw, log_a_bw, lr_bw)
    return scan_both_directions(x, fw, bw, shift=True, base=diagonal, chunk_size=chunk_size)


def quasiseparable_materialize(
    length: int,
    *,
    c: Tensor,
    b: Tensor,
    log_a: Tensor,
    delta: Tensor,
    lr: Tensor | None = None,
    causal: bool = False,
    c_bw: Tensor | None = None,
    b_bw: Tensor | None = None,
    log_a_bw: Tensor | None = None,
    lr_bw: Tensor | None = None,
) -> Tensor:
    """The explicit ``[B, H, T, T]`` matrix of the module docstring (test oracle)."""
    fw = ScanParams(c, b, log_a, lr)
    lower = lower_semiseparable(fw, strict=False)
    m = lower.roll(1, dims=-2)
    m[..., 0, :] = 0.0  # shift: row i takes row i - 1 of the lower matrix
    m = m + delta.transpose(1, 2).diag_embed()
    if not causal:
        bw = backward_params(fw, c_bw, b_bw, log_a_bw, lr_bw)
        upper = upper_semiseparable(bw, strict=False).roll(-1, dims=-2)
        upper[..., -1, :] = 0.0
        m = m + upper
    assert m.shape[-1] == length
    return m
