"""The command line: ``branchtrace COMMAND ...``. One module per command; this one only
builds the parser and maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from ..errors import BranchtraceError
from . import attach, coverage, crash, demo, doctor, history, profile, run, stats

_COMMANDS = (run, attach, doctor, demo, coverage, crash, history, profile, stats)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not a usage dump."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="branchtrace",
                     description="Record the branches a program takes; show what it did.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _COMMANDS:
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(module.NAME, help=doc.splitlines()[0] if doc else None,
                           description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        code: int = args.handler(args)
        return code
    except BranchtraceError as exc:
        print(f"branchtrace: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("branchtrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
