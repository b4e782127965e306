"""GDB commands over branchtrace trace files, modelled on GDB's ``record btrace``.

This file is sourced by GDB's embedded Python (``gdb -x FILE``, FILE printed by
``branchtrace gdb-init``), which may be another Python than branchtrace's (a system
GDB, branchtrace in a virtualenv). So nothing here imports branchtrace: each command
runs ``branchtrace`` with the interpreter it is installed in (``BRANCHTRACE_PYTHON``,
which ``gdb-init`` fills in) and prints what it says.

  bt-load FILE [PID]       the trace file the other commands read (PID: only that
                           process of it; run --gdb gives the held one)
  bt-calls [/l /i /c] [N|FROM,TO|all]  function-call-history (GDB's modifiers: /l
                           source lines, /i instruction numbers, /c indent by call depth),
                           the last N segments (default 20), GDB's FROM,TO, or all
  bt-insns [/m /s] [N|FROM,TO|all]  instruction-history (/m or /s: with source lines),
                           the last N instructions (default 40)
  bt-crash [N]             the crash report, with the last N branches (default 16)
  bt-stats                 statistics of the trace
"""

from __future__ import annotations

import os
import shlex
import subprocess

import gdb  # GDB's own module (in GDB's Python only)

BRANCHTRACE_PYTHON: str = ""  # gdb-init writes the interpreter here

_state: dict[str, str] = {}


def _branchtrace(*args: str) -> None:
    path = _state.get("file")
    if path is None:
        raise gdb.GdbError("no trace loaded: bt-load FILE first")
    pid = ["--pid", _state["pid"]] if "pid" in _state else []
    done = subprocess.run([BRANCHTRACE_PYTHON, "-m", "branchtrace", args[0], path, *pid,
                           *args[1:]], capture_output=True, text=True)
    gdb.write(done.stdout)
    if done.returncode != 0 or done.stderr.strip():
        message = done.stderr.strip() or f"branchtrace exited with status {done.returncode}"
        if done.returncode != 0:
            raise gdb.GdbError(message)
        gdb.write(message + "\n")


def _modifiers(arg: str, known: str) -> tuple[set[str], list[str]]:
    flags: set[str] = set()
    rest = []
    for word in shlex.split(arg):
        if word.startswith("/"):
            for ch in word[1:]:
                if ch not in known:
                    raise gdb.GdbError(f"unknown modifier /{ch} (this command takes "
                                       f"{' '.join('/' + k for k in known)})")
                flags.add(ch)
        else:
            rest.append(word)
    return flags, rest


def _count(rest: list[str], default: int) -> list[str]:
    if not rest:
        return ["--last", str(default)]
    if rest == ["all"]:
        return []
    if len(rest) == 1 and rest[0].isdigit() and int(rest[0]) > 0:
        return ["--last", rest[0]]
    if len(rest) == 1 and "," in rest[0]:
        return ["--range", rest[0]]                  # GDB's FROM,TO
    raise gdb.GdbError(f"expected a count, FROM,TO or 'all', not {' '.join(rest)!r}")


class _Load(gdb.Command):  # type: ignore[misc]
    """bt-load FILE [PID]: the branchtrace trace file the bt-* commands read (PID: only
    that process of it)."""

    def __init__(self) -> None:
        super().__init__("bt-load", gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)

    def invoke(self, arg: str, from_tty: bool) -> None:
        words = shlex.split(arg)
        if len(words) not in (1, 2) or (len(words) == 2 and not words[1].isdigit()):
            raise gdb.GdbError("usage: bt-load FILE [PID]")
        path = os.path.abspath(os.path.expanduser(words[0]))
        if not os.path.isfile(path):
            raise gdb.GdbError(f"{words[0]}: no such file")
        _state["file"] = path
        _state.pop("pid", None)
        if len(words) == 2:
            _state["pid"] = words[1]
        gdb.write(f"branchtrace: {path} loaded" + (f" (pid {words[1]})" if len(words) == 2
                                                    else "") + "\n")


class _Calls(gdb.Command):  # type: ignore[misc]
    """bt-calls [/l /i /c] [N|all]: the function call history of the loaded trace."""

    def __init__(self) -> None:
        super().__init__("bt-calls", gdb.COMMAND_DATA)

    def invoke(self, arg: str, from_tty: bool) -> None:
        flags, rest = _modifiers(arg, "lic")
        args = ["--calls", *_count(rest, 20)]
        args += ["--lines"] if "l" in flags else []
        args += ["--insn-ranges"] if "i" in flags else []
        args += [] if "c" in flags else ["--no-indent"]
        _branchtrace("history", *args)


class _Insns(gdb.Command):  # type: ignore[misc]
    """bt-insns [/m /s] [N|all]: the instruction history of the loaded trace."""

    def __init__(self) -> None:
        super().__init__("bt-insns", gdb.COMMAND_DATA)

    def invoke(self, arg: str, from_tty: bool) -> None:
        flags, rest = _modifiers(arg, "ms")
        _branchtrace("history", "--insns", *_count(rest, 40),
                     *(["--source"] if flags & {"m", "s"} else []))


class _Crash(gdb.Command):  # type: ignore[misc]
    """bt-crash [N]: the crash report of the loaded trace, with its last N branches."""

    def __init__(self) -> None:
        super().__init__("bt-crash", gdb.COMMAND_DATA)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _, rest = _modifiers(arg, "")
        _branchtrace("crash", *_count(rest, 16))


class _Stats(gdb.Command):  # type: ignore[misc]
    """bt-stats: the statistics of the loaded trace."""

    def __init__(self) -> None:
        super().__init__("bt-stats", gdb.COMMAND_DATA)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _branchtrace("stats")


for _command in (_Load, _Calls, _Insns, _Crash, _Stats):
    _command()
