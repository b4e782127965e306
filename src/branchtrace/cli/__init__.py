"""The command line: ``branchtrace COMMAND ...``. One module per command; this one only
builds the parser and maps errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ..errors import BranchtraceError
from . import attach, coverage, crash, demo, doctor, export, history, profile, run, sql, stats

#: Set to show the traceback of an internal error (a bug) instead of one line.
DEBUG_ENV = "BRANCHTRACE_DEBUG"

_COMMANDS = (run, attach, doctor, demo, coverage, crash, history, profile, stats, sql, export)


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


def _say(message: str) -> None:
    """Print ``message`` on stderr as one line, whatever it holds."""
    print(" ".join(message.strip().splitlines()) or "branchtrace: error", file=sys.stderr)


def entry() -> NoReturn:
    """The ``branchtrace`` command: :func:`main`, then exit. After a Frida session
    Python's own shutdown takes ~50 ms more (the teardown of Frida's module and of
    everything imported); by then every file of ours is closed and the target is
    detached, so the standard streams are flushed and the process leaves at once."""
    code = main()
    if "frida" not in sys.modules:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or 141
        except (OSError, ValueError):  # closed, or nothing to write to: as Python does
            code = code or 120
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        code: int = args.handler(args)
        return code
    except BranchtraceError as exc:
        _say(f"branchtrace: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        print("branchtrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as a shell's tools do, and
        # let nothing flush into the closed pipe at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:
        # a file or system error no command turned into a message of its own
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"branchtrace: error: {where}{exc.strerror or exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        else:
            _say(f"branchtrace: internal error: {type(exc).__name__}: {exc} "
                 f"(set {DEBUG_ENV}=1 for the traceback)")
        return 70
