"""What a generated Triton kernel is specialised for: `KernelSpec` and its flag sets.

A `KernelSpec` is the only input of the emitter. Everything in it ends up in generated
source, so it is validated on construction:

- ``name`` must be a plain Python identifier (``[A-Za-z_][A-Za-z0-9_]*``), not a keyword,
  not a dunder and not one of the generated module's own globals; generated identifiers
  are derived from it by appending fixed suffixes.
- ``origin`` (free text naming the spec node, e.g. ``"titans.arch:12:3 memory"``) is
  sanitised to printable ASCII on one line (anything else becomes ``?``) and truncated,
  because a spec name could be hostile and it is pasted into a comment.
- flags must have exactly the right Python types (``bool`` is not an ``int`` here) and
  sane values; numbers reach the source only through ``repr`` of a validated int/float.

Example:
    >>> spec = KernelSpec("gated_linear", "glin", "demo.arch:3:1", GatedLinearFlags())
    >>> spec.flags.chunk_size
    64
    >>> KernelSpec("attention", "x\\nimport os", "", AttentionFlags())
    Traceback (most recent call last):
    ...
    ValueError: kernel name 'x\\nimport os' is not a Python identifier ([A-Za-z_][A-Za-z0-9_]*)
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, fields
from typing import Literal

Family = Literal["gated_linear", "attention"]
FAMILIES: tuple[str, ...] = ("gated_linear", "attention")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Globals of every generated module; a kernel name equal to one would shadow it.
RESERVED_NAMES: frozenset[str] = frozenset({"torch", "triton", "tl", "math", "LAUNCHERS"})
MAX_ORIGIN_CHARS = 160
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class GatedLinearFlags:
    """Flags of the gated-linear family: W_t = alpha_t W_{t-1} + lr_t k_t v_t^T, o_t = s q_t W_t.

    ``has_decay``: a log-decay input exists (else alpha = 1); ``decay_per_channel``: it is
    ``[B, T, H, dk]`` (GLA) instead of ``[B, T, H]``; ``has_lr``: an ``lr [B, T, H]`` input
    exists (else lr = 1); ``use_initial_state`` / ``store_final_state``: state ``[B, H, dk,
    dv]`` in / out; ``chunk_size``: the time tile of the kernel (power of two, 16..128; a
    tiling choice with no effect on results).
    """

    has_decay: bool = True
    decay_per_channel: bool = False
    has_lr: bool = True
    use_initial_state: bool = False
    store_final_state: bool = False
    chunk_size: int = 64

    def __post_init__(self) -> None:
        _check_types(self)
        if not _is_pow2(self.chunk_size) or not 16 <= self.chunk_size <= 128:
            raise ValueError(
                f"chunk_size must be a power of two in [16, 128], got {self.chunk_size}"
            )
        if self.decay_per_channel and not self.has_decay:
            raise ValueError("decay_per_channel=True needs has_decay=True")


@dataclass(frozen=True)
class AttentionFlags:
    """Flags of the attention family (softmax attention, flash-style online softmax).

    Key j is visible to query i when any of these holds (and j < T):
    - local: (``is_causal`` -> j <= i) and (``window`` > 0 -> |i - j| < window);
    - prefix-LM: i < ``prefix`` and j < ``prefix`` (the prefix sees itself bidirectionally);
    - sink: j < ``sinks`` (and j <= i when causal).
    ``has_alibi``: add ``-slope_h * |i - j|`` to the scores; ``scale``: the softmax scale
    (None: D ** -0.5 at launch).
    """

    is_causal: bool = True
    window: int = 0
    prefix: int = 0
    sinks: int = 0
    has_alibi: bool = False
    scale: float | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("window", "prefix", "sinks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite positive float, got {self.scale!r}")


@dataclass(frozen=True)
class KernelSpec:
    """One kernel to generate: its family, its (validated) name, where it came from, flags."""

    family: Family
    name: str
    origin: str
    flags: GatedLinearFlags | AttentionFlags

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown kernel family {self.family!r}; expected one of {FAMILIES}")
        validate_name(self.name)
        expected = GatedLinearFlags if self.family == "gated_linear" else AttentionFlags
        if type(self.flags) is not expected:
            raise TypeError(
                f"kernel {self.name!r} of family {self.family!r} needs {expected.__name__}, "
                f"got {type(self.flags).__name__}"
            )
        if not isinstance(self.origin, str):
            raise TypeError(f"origin must be a str, got {type(self.origin).__name__}")
        object.__setattr__(self, "origin", sanitise_origin(self.origin))


def validate_name(name: object) -> str:
    """Return ``name`` if it is safe to use as (the stem of) a generated identifier."""
    if not isinstance(name, str):
        raise TypeError(f"kernel name must be a str, got {type(name).__name__}")
    if _IDENTIFIER.fullmatch(name) is None:
        raise ValueError(
            f"kernel name {name!r} is not a Python identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ValueError(f"kernel name {name!r} is a Python keyword; choose another name")
    if name.startswith("__"):
        raise ValueError(f"kernel name {name!r} starts with '__' (reserved for Python)")
    if name in RESERVED_NAMES:
        raise ValueError(f"kernel name {name!r} would shadow a module global; choose another")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"kernel name {name[:20]!r}... is longer than {MAX_NAME_CHARS} chars")
    return name


def sanitise_origin(origin: str) -> str:
    """Make ``origin`` safe inside a ``#`` comment: printable ASCII on one line, bounded.

    Every character outside ``' '..'~'`` (newlines, carriage returns, form feeds, NULs,
    Unicode line separators, non-ASCII) becomes ``?``; the result is at most
    ``MAX_ORIGIN_CHARS`` characters.
    """
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in origin)
    if len(cleaned) > MAX_ORIGIN_CHARS:
        cleaned = cleaned[: MAX_ORIGIN_CHARS - 3] + "..."
    return cleaned


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_types(flags: GatedLinearFlags | AttentionFlags) -> None:
    """Exact types for every flag: they are pasted into source with repr()."""
    for f in fields(flags):
        value = getattr(flags, f.name)
        default = f.default
        if default is None:  # optional float (scale)
            ok = value is None or type(value) is float
        else:
            ok = type(value) is type(default)
        if not ok:
            raise TypeError(
                f"flag {f.name} must be {type(default).__name__}, got {type(value).__name__}"
            )


# The constexpr mask flags every attention kernel and helper takes (`AttentionFlags`).
MASK_PARAMS = """    IS_CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    PREFIX: tl.constexpr,
    SINKS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,"""
