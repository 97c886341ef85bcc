"""Load generated kernel source as a Python module, cached by a hash of the source.

Triton's ``@triton.jit`` reads a kernel's source with ``inspect.getsource`` (and the
interpreter re-parses it), so the code must live in a real file: the source is written
once to ``$ARCHDSL_CACHE_DIR/triton`` (default ``~/.cache/archdsl/triton``) as
``<name>_<sha256[:16]>.py`` and imported from there. Only archdsl's own generated source
should be passed here: loading executes it.

Example:
    >>> mod = load_triton_module("X = 1\\n", "demo")
    >>> mod.X, mod is load_triton_module("X = 1\\n", "demo")
    (1, True)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import types
from pathlib import Path

from archdsl.codegen.triton.spec import validate_name

_MODULES: dict[str, types.ModuleType] = {}
_LOCK = threading.Lock()
MODULE_PREFIX = "archdsl_generated_triton"


def cache_dir() -> Path:
    """Where generated sources are written (created on demand)."""
    root = os.environ.get("ARCHDSL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "archdsl"
    )
    path = Path(root) / "triton"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_hash(source: str) -> str:
    """The cache key of a generated source: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def load_triton_module(source: str, name: str) -> types.ModuleType:
    """Import ``source`` as a fresh module named after ``name``; same source -> same module.

    ``name`` must be a valid identifier (it becomes part of the file and module name).
    """
    validate_name(name)
    digest = source_hash(source)
    key = f"{name}_{digest[:16]}"
    with _LOCK:
        cached = _MODULES.get(key)
        if cached is not None and getattr(cached, "__archdsl_source_hash__", "") == digest:
            return cached
        module = _import_source(source, key, digest)
        _MODULES[key] = module
        return module


def _import_source(source: str, key: str, digest: str) -> types.ModuleType:
    path = _write_once(cache_dir() / f"{key}.py", source)
    module_name = f"{MODULE_PREFIX}_{key}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated kernels from {path}")
    module = importlib.util.module_from_spec(spec)
    module.__archdsl_source_hash__ = digest  # type: ignore[attr-defined]
    # registered before exec so that triton (and pickling) can find the module by name
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _write_once(path: Path, source: str) -> Path:
    """Write ``source`` to ``path`` atomically unless an identical file is already there."""
    if path.exists() and path.read_text(encoding="utf-8") == source:
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(source)
    os.replace(tmp, path)
    return path
