"""Resolving `memory` and `mixer` declarations against the vocabulary's schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archdsl import vocab
from archdsl.errors import ArchError, did_you_mean
from archdsl.frontend import ast
from archdsl.frontend.evaluate import Value, evaluate
from archdsl.frontend.schema import Schema, bind
from archdsl.ir.expr import Call, Name
from archdsl.ir.memory import Bias, Features, Learner, Memory, Retention, Structure
from archdsl.ir.mixers import Attention, Conv, MatrixMixer
from archdsl.ir.spec import Mixer


def resolve_mixer(decl: ast.MemoryDecl | ast.MixerDecl, env: Mapping[str, Value]) -> Mixer:
    if isinstance(decl, ast.MemoryDecl):
        return _memory(decl, env)
    value = decl.value
    if not isinstance(value, Call | Name):
        raise ArchError(f"mixer `{decl.name}` must be a call such as `attention(causal)`", decl.loc)
    kind = value.func if isinstance(value, Call) else value.name
    if kind not in vocab.MIXER_KINDS:
        raise ArchError(
            f"unknown mixer kind `{kind}`", value.loc, did_you_mean(kind, list(vocab.MIXER_KINDS))
        )
    opts, _ = bind(vocab.MIXER_KINDS[kind], value, env, f"mixer `{decl.name}`")
    if kind == "attention":
        return Attention(name=decl.name, loc=decl.loc, **opts)
    if kind == "matrix":
        return MatrixMixer(name=decl.name, loc=decl.loc, **opts)
    return Conv(name=decl.name, loc=decl.loc, **opts)


def _choice(
    entry: ast.Entry, table: Mapping[str, Schema], env: Mapping[str, Value], mem: str
) -> tuple[str, dict[str, Any]]:
    value = entry.value
    if not isinstance(value, Call | Name):
        raise ArchError(
            f"`{entry.key}` of memory `{mem}` must be one of {', '.join(table)}",
            value.loc,
            f"e.g. `{entry.key} = {next(iter(table))}`",
        )
    kind = value.func if isinstance(value, Call) else value.name
    if kind not in table:
        raise ArchError(
            f"unknown {entry.key} `{kind}` in memory `{mem}`",
            value.loc,
            did_you_mean(kind, list(table)),
        )
    opts, _ = bind(table[kind], value, env, f"{entry.key} of memory `{mem}`")
    return kind, opts


def _memory(decl: ast.MemoryDecl, env: Mapping[str, Value]) -> Memory:
    entries: dict[str, ast.Entry] = {}
    for e in decl.entries:
        if e.key not in vocab.MEMORY_ENTRIES:
            raise ArchError(
                f"memory `{decl.name}` has no entry `{e.key}`",
                e.loc,
                did_you_mean(e.key, list(vocab.MEMORY_ENTRIES)),
            )
        if e.key in entries:
            raise ArchError(f"`{e.key}` given twice in memory `{decl.name}`", e.loc)
        entries[e.key] = e
    for key in vocab.MEMORY_REQUIRED:
        if key not in entries:
            raise ArchError(
                f"memory `{decl.name}` needs a `{key}`",
                decl.loc,
                f"add e.g. `{key} = {next(iter(vocab.MEMORY_CHOICES[key]))}`",
            )
    parts: dict[str, Any] = {}
    for key, table in vocab.MEMORY_CHOICES.items():
        if key in entries:
            kind, opts = _choice(entries[key], table, env, decl.name)
        else:
            kind, opts = "none", {}
        parts[key] = (kind, opts, entries[key].value.loc if key in entries else None)
    structure = Structure(
        kind=parts["structure"][0], loc=parts["structure"][2], **parts["structure"][1]
    )
    bias = Bias(kind=parts["bias"][0], loc=parts["bias"][2], **parts["bias"][1])
    retention = Retention(
        kind=parts["retention"][0], loc=parts["retention"][2], **parts["retention"][1]
    )
    learner = Learner(kind=parts["learner"][0], loc=parts["learner"][2], **parts["learner"][1])
    batch = 1
    if "batch" in entries:
        batch = _positive_int(entries["batch"], env, decl.name)
    features = Features()
    if "features" in entries:
        value = entries["features"].value
        if not (
            isinstance(value, Call | Name)
            and (value.func if isinstance(value, Call) else value.name) == "qkv"
        ):
            raise ArchError(
                "`features` must be `qkv(...)`",
                value.loc,
                "e.g. `features = qkv(conv = 4, norm = l2)`",
            )
        opts, _ = bind(vocab.FEATURES, value, env, f"features of memory `{decl.name}`")
        features = Features(loc=value.loc, **opts)
    return Memory(
        name=decl.name,
        structure=structure,
        bias=bias,
        retention=retention,
        learner=learner,
        batch=batch,
        features=features,
        loc=decl.loc,
    )


def _positive_int(entry: ast.Entry, env: Mapping[str, Value], mem: str) -> int:
    value = evaluate(entry.value, env, f"`{entry.key}` of memory `{mem}`")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != int(value)
        or value < 1
    ):
        raise ArchError(
            f"`{entry.key}` of memory `{mem}` must be a whole number >= 1, got {value!r}",
            entry.value.loc,
        )
    return int(value)
