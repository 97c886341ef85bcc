"""The IR's base class and source locations.

Every IR node is a frozen pydantic model. Each carries an optional source location
(`loc`) that is *not* part of its identity: two nodes that differ only in where they
were written compare equal and hash equal, which is what the round trip
parse(print(ir)) == ir needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Loc(BaseModel):
    """A position in a spec file: 1-based line and column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = "<spec>"
    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class IRNode(BaseModel):
    """Base of all IR nodes: frozen, no extra fields, location excluded from identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loc: Loc | None = None

    def _identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "loc"}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, IRNode)
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(_hashable(v) for v in self._identity().values())))


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
