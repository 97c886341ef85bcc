"""The `archdsl` command line: check, compile, graph, info, bench.

Exit codes: 0 success, 1 spec errors (printed with file:line:col, the line and a
caret), 2 usage errors, 3 internal errors (set ARCHDSL_DEBUG=1 for the traceback).
`check` imports neither torch nor triton.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from archdsl.errors import ArchError

EMIT_STAGES = ("ast", "ir", "graph", "plan", "torch", "triton")
BACKENDS = ("reference", "torch", "triton")


class UsageError(Exception):
    """A bad flag or argument value: exit code 2."""


def _parse_override(text: str) -> tuple[str, bool | int | float | str]:
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"--set expects NAME=VALUE, got {text!r}")
    raw = raw.strip()
    value: bool | int | float | str
    if raw in ("true", "false"):
        value = raw == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    return name.strip(), value


def _overrides(args: argparse.Namespace) -> dict[str, bool | int | float | str]:
    return dict(_parse_override(s) for s in getattr(args, "set", None) or [])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="archdsl", description="Compile sequence-model architecture specs."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="parse and check specs (no torch needed)")
    c.add_argument("files", nargs="+", metavar="FILE")

    c = sub.add_parser("compile", help="generate the PyTorch/Triton package of a spec")
    c.add_argument("file", metavar="FILE")
    c.add_argument(
        "-o", "--output", metavar="DIR", help="output directory (default: build/<arch name>)"
    )
    c.add_argument("--backend", choices=BACKENDS, default="torch")
    c.add_argument(
        "--emit", choices=EMIT_STAGES, help="print one stage's dump instead of writing files"
    )
    c.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a parameter")

    c = sub.add_parser("graph", help="draw the model's blocks and mixers (.dot, .svg or .png)")
    c.add_argument("file", metavar="FILE")
    c.add_argument("-o", "--output", required=True, metavar="OUT")
    c.add_argument("--set", action="append", metavar="NAME=VALUE")

    c = sub.add_parser("info", help="parameters, state sizes, lowering and FLOPs of a spec")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--context", type=int, default=2048, help="context length for FLOP estimates")
    c.add_argument("--set", action="append", metavar="NAME=VALUE")

    c = sub.add_parser("bench", help="time parse/check/codegen and forward passes of specs")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument(
        "--forward", action="store_true", help="also time a forward pass at a small size"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ArchError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"archdsl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback by default
        if os.environ.get("ARCHDSL_DEBUG"):
            traceback.print_exc()
        print(f"archdsl: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        print("  this is a bug in archdsl; rerun with ARCHDSL_DEBUG=1 for details", file=sys.stderr)
        return 3


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        from archdsl.cli.commands import cmd_check

        return cmd_check(args.files)
    if args.command == "compile":
        from archdsl.cli.commands import cmd_compile

        return cmd_compile(args.file, args.output, args.backend, args.emit, _overrides(args))
    if args.command == "graph":
        from archdsl.cli.graph_cmd import cmd_graph

        return cmd_graph(args.file, args.output, _overrides(args))
    if args.command == "info":
        from archdsl.cli.commands import cmd_info

        if args.context < 1:
            raise UsageError("--context must be a positive number of tokens")
        return cmd_info(args.file, args.context, _overrides(args))
    if args.command == "bench":
        from archdsl.cli.commands import cmd_bench

        return cmd_bench(args.files, args.forward)
    raise UsageError(f"unknown command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
