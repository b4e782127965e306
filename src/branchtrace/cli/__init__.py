"""The command line: ``branchtrace COMMAND ...``. One module per command; this one only
builds the parser and maps errors to exit codes.

Exit statuses. ``run`` and ``attach`` exit with the program's status (128 + N when
signal N killed it); their own failures use what a program rarely does, as ``env``
and ``timeout`` do: 127 the program was not found, 126 it cannot be executed, 125 any
other failure of branchtrace (bad options included). The other commands: 0 done, 2 bad
usage or a file error, 4 the store, 5 no backend, 6 a bad trace file, 70 a bug in
branchtrace (one line; BRANCHTRACE_DEBUG=1 for the traceback), 130 Ctrl-C, 141 a closed
pipe."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from types import ModuleType
from typing import NoReturn

from .. import progress
from .._version import __version__
from ..errors import BranchtraceError

#: Set to show the traceback of an internal error (a bug) instead of one line.
DEBUG_ENV = "BRANCHTRACE_DEBUG"

#: Each command's name and its module (whose NAME it is), in the order of ``--help``.
COMMANDS = (("run", "run"), ("attach", "attach"), ("snapshot", "snapshot"),
            ("doctor", "doctor"), ("demo", "demo"), ("coverage", "coverage"), ("crash", "crash"),
            ("history", "history"), ("profile", "profile"), ("stats", "stats"), ("sql", "sql"),
            ("export", "export"), ("gdb-init", "gdb_init"))
#: Commands that exit with a program's status: their own failures are 125, 126, 127.
_PASS_THROUGH = ("run", "attach")
OWN_FAILURE = 125
#: The commands that read trace files: progress on a terminal when they take a while.
_READERS = frozenset(("coverage", "crash", "history", "profile", "stats", "sql", "export"))


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (one of :data:`COMMANDS`), imported now."""
    return importlib.import_module(f"{__name__}.{dict(COMMANDS)[name]}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not a usage dump."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``only`` (a command's name), that command's
    module alone is imported (the others' subparsers are bare: ~15 ms less before
    ``run`` starts its program; only the top-level ``--help`` needs them all)."""
    parser = _Parser(prog="branchtrace",
                     description="Record the branches a program takes; show what it did.")
    parser.add_argument("--version", action="version", version=f"branchtrace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, _ in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        module = command_module(name)
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
    detached, so the standard streams are flushed and the process leaves at once, after
    removing Frida's stale helper copies (which ``frida.shutdown()`` would, in ~5.6 s)."""
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
    from ..backends.stalker.fridatmp import sweep

    sweep()  # Frida's helper copies of earlier runs, ~10 MB each (fridatmp)
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    # the command first (no option before it): only its module is needed
    parser = build_parser(words[0] if words and words[0] in dict(COMMANDS) else None)
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:
        if exc.code == 2 and command in _PASS_THROUGH:
            raise SystemExit(OWN_FAILURE) from None
        raise
    code = _run(args)
    if isinstance(code, _Own) and args.command in _PASS_THROUGH and code not in (126, 127):
        return OWN_FAILURE
    return int(code)


class _Own(int):
    """An exit status that is branchtrace's own failure, not a program's."""


def _run(args: argparse.Namespace) -> int:
    try:
        with progress.shown() if args.command in _READERS else nullcontext():
            code: int = args.handler(args)
        return code
    except BranchtraceError as exc:
        _say(f"branchtrace: error: {exc}")
        return _Own(exc.exit_code)
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
        return _Own(2)
    except Exception as exc:  # noqa: BLE001 - a bug: one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV):
            import traceback

            traceback.print_exc()
        else:
            _say(f"branchtrace: internal error: {type(exc).__name__}: {exc} "
                 f"(set {DEBUG_ENV}=1 for the traceback)")
        return _Own(70)
