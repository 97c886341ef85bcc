"""The closed vocabulary of matrix-mixer classes: class name -> implementation.

Each entry pairs a fast structured path with its materialised-matrix oracle; both take
the same keyword parameters (documented in the implementing module), plus ``causal``:

    fast(x [B, T, H, D], *, causal, **params) -> [B, T, H, D]
    materialize(T, *, causal, **params)       -> [B|1, H, T, T]

Classes whose fixed and data-dependent forms are different algorithms (vandermonde:
S4D kernel vs sequence-aligned scan; cauchy: S4 DPLR kernel vs Hydra's Cauchy mixer)
have two entries; for the others a fixed parameter is simply one without a batch dim
(or with batch 1) that broadcasts. A ``kernel`` can name a different algorithm for a
class: ``semiseparable`` with ``kernel = selective`` is Mamba's S6 scan, whose matrices
are per channel (``[B, H, P, T, T]``), so its entry also names how to apply them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from archdsl.mixers.attention_matrix import attention_materialize, attention_mix
from archdsl.mixers.cauchy import (
    cauchy_data_materialize,
    cauchy_data_mix,
    cauchy_fixed_materialize,
    cauchy_fixed_mix,
)
from archdsl.mixers.dense import dense_materialize, dense_mix
from archdsl.mixers.lowrank import lowrank_materialize, lowrank_mix
from archdsl.mixers.ops import apply_matrix
from archdsl.mixers.quasiseparable import quasiseparable_materialize, quasiseparable_mix
from archdsl.mixers.selective_scan import (
    apply_channel_matrices,
    selective_materialize,
    selective_scan,
)
from archdsl.mixers.semiseparable import semiseparable_materialize, semiseparable_mix
from archdsl.mixers.toeplitz import toeplitz_materialize, toeplitz_mix
from archdsl.mixers.vandermonde import (
    vandermonde_data_materialize,
    vandermonde_data_mix,
    vandermonde_fixed_materialize,
    vandermonde_fixed_mix,
)


@dataclass(frozen=True)
class MixerImpl:
    """One class (and form): its fast path, its oracle, and its parameter names.

    ``apply(m, x)`` multiplies the oracle's matrices into ``x`` (per head by default).
    """

    cls: str
    algorithm: str
    fast: Callable[..., Tensor]
    materialize: Callable[..., Tensor]
    params: tuple[str, ...]
    complexity: str
    apply: Callable[[Tensor, Tensor], Tensor] = apply_matrix


_SS = ("c", "b", "log_a", "lr", "c_bw", "b_bw", "log_a_bw", "lr_bw")

_ANY_FORM: dict[str, MixerImpl] = {
    "dense": MixerImpl("dense", "matmul", dense_mix, dense_materialize, ("weight",), "T^2"),
    "attention": MixerImpl(
        "attention",
        "scaled_dot_product_attention",
        attention_mix,
        attention_materialize,
        ("q", "k", "scale"),
        "T^2",
    ),
    "lowrank": MixerImpl(
        "lowrank",
        "chunked_ssd (causal) / two matmuls",
        lowrank_mix,
        lowrank_materialize,
        ("q", "k", "scale"),
        "T",
    ),
    "toeplitz": MixerImpl(
        "toeplitz", "fft_conv", toeplitz_mix, toeplitz_materialize, ("filter",), "T log T"
    ),
    "semiseparable": MixerImpl(
        "semiseparable", "chunked_ssd", semiseparable_mix, semiseparable_materialize, _SS, "T"
    ),
    "quasiseparable": MixerImpl(
        "quasiseparable",
        "chunked_ssd over [x ; flip x]",
        quasiseparable_mix,
        quasiseparable_materialize,
        (*_SS, "delta"),
        "T",
    ),
}

_BY_FORM: dict[tuple[str, bool], MixerImpl] = {
    ("vandermonde", False): MixerImpl(
        "vandermonde",
        "s4d_kernel + fft_conv",
        vandermonde_fixed_mix,
        vandermonde_fixed_materialize,
        ("log_dt", "a", "b", "c", "c_bw"),
        "T log T",
    ),
    ("vandermonde", True): MixerImpl(
        "vandermonde",
        "chunked_ssd (decay per state channel)",
        vandermonde_data_mix,
        vandermonde_data_materialize,
        ("c", "b", "log_z"),
        "T",
    ),
    ("cauchy", False): MixerImpl(
        "cauchy",
        "s4_kernel (Cauchy + iFFT) + fft_conv",
        cauchy_fixed_mix,
        cauchy_fixed_materialize,
        ("log_dt", "lam", "p", "b", "ct", "ct_bw", "kernel_len"),
        "T log T",
    ),
    ("cauchy", True): MixerImpl(
        "cauchy",
        "blocked Cauchy sum",
        cauchy_data_mix,
        cauchy_data_materialize,
        ("q", "k", "c"),
        "T^2 N",
    ),
}

_BY_KERNEL: dict[tuple[str, str], MixerImpl] = {
    ("semiseparable", "selective"): MixerImpl(
        "semiseparable",
        "selective_scan (chunk-parallel recurrence, S6)",
        selective_scan,
        selective_materialize,
        ("dt", "a", "b", "c", "d"),
        "T",
        apply=apply_channel_matrices,
    ),
}

MATRIX_CLASSES: tuple[str, ...] = (
    "dense",
    "attention",
    "lowrank",
    "toeplitz",
    "vandermonde",
    "cauchy",
    "semiseparable",
    "quasiseparable",
)
# Classes whose parameters the layer learns directly (no per-token projections).
FIXED_ONLY_CLASSES = frozenset({"dense"})
SEQUENCE_ALIGNED_CLASSES = frozenset(
    {"attention", "lowrank", "semiseparable", "quasiseparable", "vandermonde", "cauchy"}
)


def implementation(cls: str, data: bool, kernel: str = "explicit") -> MixerImpl:
    """The implementation of class ``cls`` in its data-dependent (``data``) or fixed form,
    or the one its ``kernel`` names (see the module docstring)."""
    if (cls, kernel) in _BY_KERNEL:
        return _BY_KERNEL[(cls, kernel)]
    if (cls, data) in _BY_FORM:
        return _BY_FORM[(cls, data)]
    if cls in _ANY_FORM:
        return _ANY_FORM[cls]
    raise KeyError(f"unknown matrix-mixer class {cls!r}; expected one of {MATRIX_CLASSES}")
