"""The program a backend starts: the path exec would run, and where recording begins."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import CannotExecute, ProgramNotFound, TargetError, UsageError

if TYPE_CHECKING:
    from ...model import ModuleMap


def find_program(program: str) -> str:
    """The path exec would run, or a one-line TargetError."""
    if "/" in program:
        path = program
    else:
        found = shutil.which(program)
        if found is None:
            raise ProgramNotFound(f"program not found: {program}")
        path = found
    if os.path.isdir(path):
        raise CannotExecute(f"cannot run {program}: it is a directory")
    if not os.path.exists(path):
        raise ProgramNotFound(f"program not found: {program}")
    if not os.access(path, os.X_OK):
        raise CannotExecute(f"cannot run {program}: permission denied")
    return path


def start_vaddr(path: str, start: str | None) -> tuple[int | None, str | None]:
    """The ELF address of the executable ``path`` to start recording at, for ``--start``
    (``None``: ``main``; ``"entry"``: the first instruction, given as None), and a note
    when the default cannot be found and the first instruction is used instead."""
    from ...symbols import load_elf

    if start == "entry":
        return None, None
    image = load_elf(path)
    if image is None:
        if start is None:
            return None, f"cannot read {path} as ELF; stepping from the first instruction"
        raise TargetError(f"cannot read the symbols of {path}")
    name = start or "main"
    address = image.symbol_address(name)
    if address is None:
        if start is None:
            return None, "no symbol 'main' in the executable; stepping from the first instruction"
        raise UsageError(f"--start: no function {name!r} in {path}")
    return address, None


def read_argv(pid: int) -> tuple[str, ...]:
    """The argv of ``pid`` from /proc (bytes that are not UTF-8 kept as surrogates);
    () when it cannot be read (the process is gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    return tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1])


def function_address(modules: Sequence[ModuleMap], name: str, pid: int) -> int:
    """The run-time address of function ``name`` in ``modules`` (the executable first,
    then the libraries loaded so far), for ``--trigger``; a usage error if none has it."""
    from ...symbols import Symbolizer

    address = Symbolizer(modules, lines=False).symbol_address(None, name)
    if address is None:
        names = ", ".join(m.name for m in modules if not m.path.startswith("[")) or "none"
        raise UsageError(f"--trigger: no function {name!r} in pid {pid} (its modules: {names})")
    return address


def status_field(tid: int, name: str) -> int | None:
    """An integer field of /proc/TID/status (``Tgid``, ``PPid``), None if unreadable."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
