"""The front door: a spec loaded, resolved and checked (`load`, `loads`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from archdsl.check.rules import check_arch
from archdsl.errors import ArchError
from archdsl.frontend.evaluate import Value
from archdsl.frontend.load import SourceSet, load_sources
from archdsl.frontend.resolve import resolve
from archdsl.ir.spec import Arch


@dataclass(frozen=True)
class Spec:
    """A checked architecture: its IR (the single source of truth) and where it came from.

    >>> spec = loads("arch a(d_model = 8, heads = 2, layers = 1, vocab = 5)\\n"
    ...              "block b(x) { return x + rmsnorm(x) }\\nmodel = causal_lm(vocab) { b }")
    >>> spec.ir.d_model, spec.ir.blocks[0].name
    (8, 'b')
    """

    ir: Arch
    sources: SourceSet | None = None
    overrides: tuple[tuple[str, Value], ...] = ()

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def path(self) -> str:
        return self.sources.root.file if self.sources else "<python>"

    def with_params(self, **overrides: Value) -> Spec:
        """The same spec re-resolved with some parameters changed (`d_model = 64`)."""
        if not overrides:
            return self
        if self.sources is None:
            raise ArchError(
                "parameters of a spec built in Python cannot be overridden",
                None,
                "build the IR again with the new values (builder functions take parameters)",
            )
        merged = dict(self.overrides)
        merged.update(overrides)
        return _checked(self.sources, merged)

    def ir_hash(self) -> str:
        """A hash of the normalised IR (locations excluded): the compile-cache key."""
        return ir_hash(self.ir)


def ir_hash(arch: Arch) -> str:
    from archdsl.ir.printer import print_arch

    return hashlib.sha256(print_arch(arch).encode()).hexdigest()[:16]


def _checked(sources: SourceSet, overrides: Mapping[str, Value]) -> Spec:
    try:
        arch = resolve(sources, overrides)
        check_arch(arch)
    except ArchError as err:
        raise err.with_sources(sources.texts) from None
    except RecursionError:
        raise ArchError(
            "the spec is nested too deeply to process",
            None,
            "split deep expressions into statements",
        ) from None
    return Spec(ir=arch, sources=sources, overrides=tuple(sorted(overrides.items())))


def load(path: str | Path, **overrides: Value) -> Spec:
    """Parse, resolve and check the spec at `path` (raises `ArchError`)."""
    try:
        sources = load_sources(path=path)
    except ArchError as err:
        raise err from None
    return _checked(sources, overrides)


def loads(text: str, name: str = "<spec>", **overrides: Value) -> Spec:
    """Like `load`, for spec text (imports resolve relative to the current directory)."""
    return _checked(load_sources(text=text, name=name), overrides)


def from_ir(arch: Arch) -> Spec:
    """Check an IR built in Python (see `archdsl.builder`) and wrap it as a Spec."""
    check_arch(arch)
    return Spec(ir=arch)
