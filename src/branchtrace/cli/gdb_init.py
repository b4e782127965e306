"""Print the path of a GDB command file that adds branchtrace commands to GDB.

    gdb -x "$(branchtrace gdb-init)" ./prog
    (gdb) bt-load prog.btrace     (bt-load FILE PID: only that process of the trace)
    (gdb) bt-calls /l 10          function-call-history: the last 10 segments, with lines
    (gdb) bt-insns /s 20          instruction-history, with source
    (gdb) bt-crash                the crash report

The commands (bt-load, bt-calls [/l /i /c], bt-insns [/m /s], bt-crash, bt-stats) are
modelled on GDB's `record function-call-history` and `record instruction-history`. They
run branchtrace with the Python it is installed in, so they work from any GDB, whatever
Python GDB embeds. The file is written once per installation (under
$XDG_CACHE_HOME/branchtrace, else ~/.cache/branchtrace).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from importlib import resources
from pathlib import Path

NAME = "gdb-init"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def command_file() -> Path:
    """Write (if needed) and return the command file for this installation."""
    body = resources.files("branchtrace.gdb").joinpath("commands.py").read_text()
    placeholder = "BRANCHTRACE_PYTHON: str = \"\"  # gdb-init writes the interpreter here\n"
    if placeholder not in body:
        raise RuntimeError("branchtrace/gdb/commands.py has no interpreter placeholder")
    text = body.replace(placeholder, f"BRANCHTRACE_PYTHON = {sys.executable!r}\n")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "branchtrace"
    path = base / f"gdb-init-{digest}.py"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def main(args: argparse.Namespace) -> int:
    print(command_file())
    return 0
