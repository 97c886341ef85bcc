"""Sequence mixers other than memories: Hydra matrix mixers, attention, local conv."""

from __future__ import annotations

from typing import Literal

from archdsl.ir.base import IRNode

MatrixClass = Literal[
    "dense",
    "attention",
    "lowrank",
    "toeplitz",
    "vandermonde",
    "cauchy",
    "semiseparable",
    "quasiseparable",
]
Direction = Literal["causal", "bidirectional"]


class MatrixMixer(IRNode):
    """Y = M X per head with M a structured T x T matrix of class ``cls`` (Hydra).

    ``data``: parameters computed from the input (sequence-aligned) or fixed.
    ``state``: state size N in real dimensions (semiseparable / vandermonde / cauchy
    ranks; the fixed S4 / S4D kernels hold it as N / 2 complex conjugate pairs, as S4's
    ``d_state`` does, so it must be even there);
    ``conv``: short depthwise conv before the mixer (Hydra: 7, non-causal when
    bidirectional); ``expand``: inner width / d_model; ``headdim``: channels per head;
    ``max_len``: fixed sequence length for `dense` and fixed `toeplitz`;
    ``kernel``: how a fixed toeplitz filter is parametrised (explicit or implicit MLP,
    Hyena; s4 / s4d kernels), or, for `semiseparable`, ``selective`` = Mamba's S6 scan
    (a diagonal A per channel and state, data-dependent dt, B, C); ``gate``:
    multiplicative output gate (Mamba / Hydra z branch).
    """

    name: str
    cls: MatrixClass
    direction: Direction = "causal"
    data: bool = True
    state: int = 64
    conv: int = 0
    expand: float = 2.0
    headdim: int = 64
    max_len: int = 0
    kernel: Literal["explicit", "implicit", "s4", "s4d", "selective"] = "explicit"
    gate: bool = True


class Attention(IRNode):
    """Softmax attention with composable masks and a position scheme.

    Masks: ``causal``; ``window`` (sliding, 0 = none); ``prefix`` (prefix-LM: the first
    ``prefix`` tokens see each other); ``persistent`` learned tokens prepended (Titans);
    ``sinks`` always-visible first tokens. Positions: rope (``rope_base``,
    ``rope_scaling`` linear / ntk / xpos with ``rope_factor``), alibi, relative (Music
    Transformer skewing), none.
    """

    name: str
    causal: bool = True
    window: int = 0
    prefix: int = 0
    persistent: int = 0
    sinks: int = 0
    pos: Literal["none", "rope", "alibi", "relative"] = "rope"
    rope_base: float = 10000.0
    rope_scaling: Literal["none", "linear", "ntk", "xpos"] = "none"
    rope_factor: float = 1.0
    heads: int | None = None
    kv_heads: int | None = None
    qk_norm: bool = False


class Conv(IRNode):
    """Depthwise short convolution over time (local mixing), causal or centred."""

    name: str
    kernel: int = 4
    causal: bool = True
    act: Literal["none", "silu"] = "none"
