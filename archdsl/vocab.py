"""The closed vocabulary of archdsl: every primitive a spec may name, in one place.

Grouped by role, with named sets that passes test membership against:
`MEMORY_CHOICES` (the four Miras choices and the layer options), `MIXER_KINDS`
(declarable sequence mixers), `BLOCK_OPS` (what a block's dataflow may call), `HEADS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archdsl.frontend.schema import REQUIRED, Opt, Schema

ACTS = ("gelu", "silu", "relu", "tanh", "identity")
# Block MLPs also take squared ReLU (Primer, RWKV's channel mix).
MLP_ACTS = (*ACTS, "relu2")

# ---------------------------------------------------------------- memories (Miras)

STRUCTURES = {
    "vector": Schema("vector", doc="elementwise memory w (dk == dv), read q * w"),
    "matrix": Schema("matrix", doc="matrix memory W [dk, dv], read q W"),
    "mlp": Schema(
        "mlp",
        {
            "depth": Opt("int", 2, min=1, max=8),
            "expand": Opt("float", 4.0, min=0, min_exclusive=True),
            "act": Opt("choice", "gelu", ACTS),
            "residual": Opt("bool", False),
            "norm": Opt("choice", "none", ("none", "layer", "rms")),
        },
        doc="MLP memory: depth layers, hidden expand * dk, optional residual and norm",
    ),
}

BIASES = {
    "dot": Schema("dot", doc="-<M(k), v> (Hebbian)"),
    "l2": Schema("l2", doc="1/2 ||M(k) - v||^2 (delta rule)"),
    "lp": Schema(
        "lp", {"p": Opt("float", REQUIRED, min=1)}, positional=("p",), doc="||M(k) - v||_p^p"
    ),
    "l1": Schema("l1", doc="||M(k) - v||_1"),
    "huber": Schema(
        "huber",
        {
            "delta": Opt("gate", 1.0, role="delta"),
            "form": Opt("choice", "coord", ("coord", "norm", "mixture")),
        },
        positional=("delta",),
        doc="Huber loss, per coordinate, on the norm, or Yaad's mixture",
    ),
    "robust": Schema(
        "robust",
        {"radius": Opt("float", REQUIRED, min=0, min_exclusive=True)},
        positional=("radius",),
        doc="robust to value shifts of the given radius",
    ),
}

RETENTIONS = {
    "none": Schema("none", doc="keep everything"),
    "decay": Schema(
        "decay",
        {
            "alpha": Opt("gate", "data", role="alpha"),
            "when": Opt("choice", "before", ("before", "after")),
            "tie_key": Opt("bool", False),
        },
        flags={"before": ("when", "before"), "after": ("when", "after")},
        positional=("alpha",),
        doc="W <- alpha W; alpha the fraction kept",
    ),
    "lq": Schema(
        "lq",
        {
            "q": Opt("float", REQUIRED, min=1, min_exclusive=True),
            "alpha": Opt("gate", "none", role="alpha", nullable=True),
        },
        positional=("q",),
        doc="Moneta: q-norm normalisation of the accumulator at chunk ends",
    ),
    "kl": Schema(
        "kl", {"alpha": Opt("gate", "data", role="alpha")}, doc="Memora: softmax retention"
    ),
    "elastic": Schema(
        "elastic",
        {
            "l1": Opt("float", 0.0, min=0),
            "l2": Opt("float", 0.0, min=0),
            "alpha": Opt("gate", "none", role="alpha", nullable=True),
        },
        doc="elastic net: soft threshold",
    ),
}

LEARNERS = {
    "gd": Schema("gd", {"lr": Opt("gate", 1.0, role="lr")}, positional=("lr",)),
    "momentum": Schema(
        "momentum",
        {"lr": Opt("gate", "data", role="lr"), "beta": Opt("gate", "data", role="beta")},
        positional=("lr", "beta"),
    ),
    "implicit": Schema("implicit", {"lr": Opt("gate", "data", role="lr")}, positional=("lr",)),
    "steps": Schema(
        "steps",
        {"n": Opt("int", REQUIRED, min=1, max=16), "lr": Opt("gate", "data", role="lr")},
        positional=("n",),
    ),
}

FEATURES = Schema(
    "qkv",
    {
        "conv": Opt("int", 0, min=0, max=64),
        "act": Opt("choice", "none", ("none", "silu", "relu", "elu", "sigmoid")),
        "act_on": Opt("choice", "qkv", ("qkv", "qk")),
        "norm": Opt("choice", "none", ("none", "l2")),
        "dk": Opt("int", None, min=1, nullable=True),
        "dv": Opt("int", None, min=1, nullable=True),
        "out_norm": Opt("choice", "none", ("none", "rms", "layer")),
        "out_gate": Opt("choice", "none", ("none", "sigmoid", "silu")),
        "scale": Opt("float", None, min=0, min_exclusive=True, nullable=True),
        "normalizer": Opt("bool", False),
        "persistent": Opt("int", 0, min=0, max=4096),
    },
)

MEMORY_CHOICES = {
    "structure": STRUCTURES,
    "bias": BIASES,
    "retention": RETENTIONS,
    "learner": LEARNERS,
}
MEMORY_ENTRIES = (*MEMORY_CHOICES, "batch", "features")
MEMORY_REQUIRED = ("structure", "bias", "learner")

# ---------------------------------------------------------------- mixers

MATRIX_CLASSES = (
    "dense",
    "attention",
    "lowrank",
    "toeplitz",
    "vandermonde",
    "cauchy",
    "semiseparable",
    "quasiseparable",
)
POSITIONS = ("none", "rope", "alibi", "relative")

MIXER_KINDS = {
    "attention": Schema(
        "attention",
        {
            "causal": Opt("bool", True),
            "window": Opt("int", 0, min=0),
            "prefix": Opt("int", 0, min=0),
            "persistent": Opt("int", 0, min=0),
            "sinks": Opt("int", 0, min=0),
            "pos": Opt("choice", "rope", POSITIONS),
            "rope_base": Opt("float", 10000.0, min=1),
            "rope_scaling": Opt("choice", "none", ("none", "linear", "ntk", "xpos")),
            "rope_factor": Opt("float", 1.0, min=0, min_exclusive=True),
            "heads": Opt("int", None, min=1, nullable=True),
            "kv_heads": Opt("int", None, min=1, nullable=True),
            "qk_norm": Opt("bool", False),
        },
        flags={"causal": ("causal", True), "bidirectional": ("causal", False)},
        doc="softmax attention with masks and positions",
    ),
    "matrix": Schema(
        "matrix",
        {
            "cls": Opt("choice", REQUIRED, MATRIX_CLASSES),
            "direction": Opt("choice", "causal", ("causal", "bidirectional")),
            "data": Opt("bool", True),
            "state": Opt("int", 64, min=1),
            "conv": Opt("int", 0, min=0, max=64),
            "expand": Opt("float", 2.0, min=0, min_exclusive=True),
            "headdim": Opt("int", 64, min=1),
            "max_len": Opt("int", 0, min=0),
            "kernel": Opt("choice", "explicit", ("explicit", "implicit", "s4", "s4d", "selective")),
            "gate": Opt("bool", True),
        },
        flags={
            **{c: ("cls", c) for c in MATRIX_CLASSES},
            "causal": ("direction", "causal"),
            "bidirectional": ("direction", "bidirectional"),
            "fixed": ("data", False),
        },
        doc="Hydra matrix mixer Y = M X of a structured class",
    ),
    "conv": Schema(
        "conv",
        {
            "kernel": Opt("int", 4, min=1, max=1024),
            "causal": Opt("bool", True),
            "act": Opt("choice", "none", ("none", "silu")),
        },
        flags={"causal": ("causal", True), "centered": ("causal", False)},
        doc="depthwise short convolution over time",
    ),
}

# ---------------------------------------------------------------- block ops

OpGroup = Literal["norm", "activation", "linear", "channel_mixer", "local_mixer", "scale"]


@dataclass(frozen=True)
class BlockOp:
    """A primitive a block may call: ``arity`` tensor inputs, then keyword options.

    ``width``: the output width: ``same`` as the (first) input, or the ``out`` option.
    """

    name: str
    group: OpGroup
    schema: Schema
    arity: int = 1
    width: Literal["same", "out"] = "same"


def _op(name: str, group: OpGroup, options: dict[str, Opt] | None = None, **kw: object) -> BlockOp:
    return BlockOp(name, group, Schema(name, options or {}), **kw)  # type: ignore[arg-type]


BLOCK_OPS: dict[str, BlockOp] = {
    op.name: op
    for op in (
        _op("rmsnorm", "norm", {"eps": Opt("float", 1e-6, min=0, min_exclusive=True)}),
        _op("layernorm", "norm", {"eps": Opt("float", 1e-5, min=0, min_exclusive=True)}),
        _op("l2norm", "norm"),
        _op("sigmoid", "activation"),
        _op("silu", "activation"),
        _op("gelu", "activation"),
        _op("relu", "activation"),
        _op("tanh", "activation"),
        _op("softplus", "activation"),
        _op(
            "linear",
            "linear",
            {"out": Opt("int", None, min=1, nullable=True), "bias": Opt("bool", False)},
            width="out",
        ),
        _op(
            "mlp",
            "channel_mixer",
            {
                "expand": Opt("float", 4.0, min=0, min_exclusive=True),
                "act": Opt("choice", "gelu", MLP_ACTS),
            },
        ),
        _op("swiglu", "channel_mixer", {"expand": Opt("float", 8 / 3, min=0, min_exclusive=True)}),
        _op(
            "glu",
            "channel_mixer",
            {
                "expand": Opt("float", 2.0, min=0, min_exclusive=True),
                "act": Opt("choice", "sigmoid", ("sigmoid", "silu", "gelu", "relu")),
            },
        ),
        _op(
            "shortconv",
            "local_mixer",
            {"kernel": Opt("int", 4, min=1, max=1024), "causal": Opt("bool", True)},
        ),
        _op("token_shift", "local_mixer"),
        _op("scale", "scale", {"init": Opt("float", 1.0)}),
    )
}

ELEMENTWISE = frozenset(n for n, op in BLOCK_OPS.items() if op.group in ("activation", "scale"))
NORMS = frozenset(n for n, op in BLOCK_OPS.items() if op.group == "norm")
CAUSAL_UNSAFE_OPS = frozenset({"shortconv"})  # unsafe when causal = false

# ---------------------------------------------------------------- model heads

HEADS = {
    "causal_lm": Schema(
        "causal_lm",
        {
            "vocab": Opt("int", REQUIRED, min=1),
            "tied": Opt("bool", False),
            "norm": Opt("choice", "rms", ("rms", "layer", "none")),
        },
        positional=("vocab",),
    ),
    "masked_lm": Schema(
        "masked_lm",
        {
            "vocab": Opt("int", REQUIRED, min=1),
            "tied": Opt("bool", False),
            "norm": Opt("choice", "rms", ("rms", "layer", "none")),
        },
        positional=("vocab",),
    ),
    "classifier": Schema(
        "classifier",
        {
            "vocab": Opt("int", REQUIRED, min=1),
            "classes": Opt("int", REQUIRED, min=1),
            "pool": Opt("choice", "mean", ("mean", "first", "last")),
            "norm": Opt("choice", "rms", ("rms", "layer", "none")),
        },
        positional=("vocab", "classes"),
    ),
    "encoder": Schema(
        "encoder",
        {
            "vocab": Opt("int", REQUIRED, min=1),
            "norm": Opt("choice", "rms", ("rms", "layer", "none")),
        },
        positional=("vocab",),
    ),
}
CAUSAL_HEADS = frozenset({"causal_lm"})

REPEAT = Schema(
    "repeat",
    {"n": Opt("int", REQUIRED, min=1, max=4096), "shared": Opt("bool", False)},
    flags={"shared": ("shared", True)},
    positional=("n",),
)

# `recall(memory, x)`: read a memory as it stood before the current segment (Titans MAC).
RECALL = "recall"

CONVENTIONAL_PARAMS = ("d_model", "layers", "heads", "vocab")
BACKENDS = ("reference", "torch", "triton")
RESERVED_NAMES = frozenset(
    set(BLOCK_OPS)
    | set(MIXER_KINDS)
    | set(HEADS)
    | {"repeat", "head", "true", "false", "none", "recall"}
)
