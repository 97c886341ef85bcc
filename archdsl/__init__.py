"""archdsl: a compiler for neural sequence-model architectures.

`load` / `loads` read and check a spec (no torch needed); `build` makes an
`nn.Module`; `core` returns the kernel-level functional core of a memory or mixer.
Torch-dependent entry points are imported on first use, so `archdsl check` stays light.
"""

from __future__ import annotations

from typing import Any

from archdsl.errors import ArchError
from archdsl.spec import Spec, load, loads

__all__ = ["ArchError", "Spec", "build", "compile_spec", "core", "load", "loads"]


def __getattr__(name: str) -> Any:
    if name in ("build", "core", "compile_spec"):
        from archdsl import api

        return getattr(api, name)
    raise AttributeError(f"module 'archdsl' has no attribute {name!r}")
