"""Miras memories: the four choices (structure, bias, retention, learner) as IR.

Semantics are those of DESIGN.md section 1.1. Conventions: `alpha` is the fraction
*kept* (Miras), `l2` is half the squared error, decays cross the kernel boundary in log
space. Each gate is a `Gate`; its `per` says whether it is one value per head or per
(key) channel.
"""

from __future__ import annotations

from typing import Literal

from archdsl.ir.base import IRNode
from archdsl.ir.expr import Expr

GateMode = Literal["const", "learned", "data"]
GatePer = Literal["head", "channel"]
# How a data gate's projection becomes a rate:
#   sigmoid / softplus / identity: applied to the projection;
#   logsigmoid: the projection gives log alpha = logsigmoid(x) (GLA, Titans' 1-alpha);
#   mamba: log alpha = -exp(A_log) * softplus(x + dt_bias) (Mamba2, Gated DeltaNet).
GateAct = Literal["sigmoid", "softplus", "logsigmoid", "mamba", "identity"]


class Gate(IRNode):
    """A rate or gate (lr, momentum beta, retention alpha, Huber delta).

    - ``const``: ``value``, or ``formula`` over ``head`` (0-based index) and ``heads``
      (RetNet: ``1 - 2 ** (-5 - head)``); a formula adapts to the number of heads.
    - ``learned``: a parameter per head or channel, initialised to ``value``.
    - ``data``: a projection of the token (low rank when ``rank`` > 0), then ``act``.
    """

    mode: GateMode
    per: GatePer = "head"
    value: float | None = None
    formula: Expr | None = None
    act: GateAct | None = None
    rank: int = 0


class Structure(IRNode):
    """What W is: `vector` (elementwise, dk == dv), `matrix` (dk x dv, read q W), or an MLP.

    mlp: ``depth`` layers, hidden width ``expand * dk``, activation ``act``;
    ``residual`` adds the input (M(x) = x + f(x)); ``norm`` normalises f(x) (Miras: LN).
    """

    kind: Literal["vector", "matrix", "mlp"]
    depth: int = 2
    expand: float = 4.0
    act: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu"
    residual: bool = False
    norm: Literal["none", "layer", "rms"] = "none"


class Bias(IRNode):
    """The inner loss l(M(k), v) the memory is trained on.

    dot: -<M(k), v>; l2: 1/2 ||M(k) - v||^2; lp: ||e||_p^p; l1: ||e||_1;
    huber: per coordinate (`coord`), on the norm (`norm`) or Yaad's mixture (`mixture`),
    threshold ``delta``; robust: the value-shift-robust loss of radius ``radius``.
    """

    kind: Literal["dot", "l2", "lp", "l1", "huber", "robust"]
    p: float = 2.0
    delta: Gate | None = None
    form: Literal["coord", "norm", "mixture"] = "coord"
    radius: float = 0.0


class Retention(IRNode):
    """What the memory keeps of the past.

    decay: W <- alpha W (``when`` = before: forget then write, gradient at the decayed W;
    after: Titans, gradient at the un-decayed W); lq: Moneta's q-norm normalisation of the
    accumulator at chunk ends (with optional decay ``alpha``); kl: Memora's softmax form;
    elastic: soft-thresholding with ``l1`` / ``l2`` strengths. ``tie_key`` makes the key
    1 - alpha (HGRN2).
    """

    kind: Literal["none", "decay", "lq", "kl", "elastic"]
    alpha: Gate | None = None
    when: Literal["before", "after"] = "before"
    q: float = 2.0
    l1: float = 0.0
    l2: float = 0.0
    tie_key: bool = False


class Learner(IRNode):
    """How the memory learns: gd, momentum (Titans; ``beta`` the momentum),
    implicit (Longhorn's closed form), steps (``n`` GD steps per token, DeltaProduct)."""

    kind: Literal["gd", "momentum", "implicit", "steps"]
    lr: Gate
    beta: Gate | None = None
    n: int = 1


class Features(IRNode):
    """The layer around the memory: how q, k, v and the output are made.

    ``conv``: depthwise causal conv kernel after each projection (0: none); ``act`` on
    q, k, v (``act_on = qk``: on q and k only, a feature map phi as in linear attention);
    ``norm`` on q and k; ``dk`` / ``dv`` head dims (None: d_model / heads); ``out_norm``
    and ``out_gate`` before the output projection; ``scale`` on q (None: dk^-1/2 for
    vector/matrix memories, 1 for mlp memories); ``normalizer``: divide each head's read
    by the same memory's read of a constant value 1 (Katharopoulos' denominator
    ``q_t . z_t``, ``z_t`` the keys written so far, with the memory's own decay and rates);
    ``persistent``: learned, input-independent tokens the memory processes before every
    sequence (Titans MAG / MAL: ``M([p | x])``, the outputs of ``p`` dropped).
    """

    conv: int = 0
    act: Literal["none", "silu", "relu", "elu", "sigmoid"] = "none"
    act_on: Literal["qkv", "qk"] = "qkv"
    norm: Literal["none", "l2"] = "none"
    dk: int | None = None
    dv: int | None = None
    out_norm: Literal["none", "rms", "layer"] = "none"
    out_gate: Literal["none", "sigmoid", "silu"] = "none"
    scale: float | None = None
    normalizer: bool = False
    persistent: int = 0


class Memory(IRNode):
    """A named Miras memory declaration (a sequence mixer of the block dataflow)."""

    name: str
    structure: Structure
    bias: Bias
    retention: Retention
    learner: Learner
    batch: int = 1
    features: Features = Features()
