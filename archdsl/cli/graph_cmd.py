"""`archdsl graph FILE -o out.dot|.svg|.png`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from archdsl.cli.main import UsageError
from archdsl.errors import ArchError
from archdsl.frontend.evaluate import Value


def cmd_graph(path: str, output: str, overrides: dict[str, Value]) -> int:
    from archdsl.graph.render import to_dot, to_svg
    from archdsl.spec import load

    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in (".dot", ".svg", ".png"):
        raise UsageError(f"graph output must end in .dot, .svg or .png, got {output!r}")
    arch = load(path, **overrides).ir
    if suffix == ".dot":
        _write(out, to_dot(arch))
    elif suffix == ".svg":
        _write(out, to_svg(arch))
    else:
        _png(arch, out)
    print(f"wrote {out}")
    return 0


def _write(out: Path, text: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as err:
        raise ArchError(f"cannot write '{out}': {err.strerror}") from None


def _png(arch: object, out: Path) -> None:
    from archdsl.graph.render import to_dot

    dot = shutil.which("dot")
    if dot is None:
        raise ArchError(
            "PNG output needs Graphviz's `dot` program, which is not installed",
            None,
            "write .svg (no dependencies) or .dot, or install graphviz (apt-get install graphviz)",
        )
    with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as f:
        f.write(to_dot(arch))  # type: ignore[arg-type]
    try:
        subprocess.run(
            [dot, "-Tpng", f.name, "-o", str(out)], check=True, capture_output=True, timeout=60
        )
    except subprocess.CalledProcessError as err:
        raise ArchError(f"graphviz failed: {err.stderr.decode(errors='replace')[:200]}") from None
    finally:
        Path(f.name).unlink(missing_ok=True)
