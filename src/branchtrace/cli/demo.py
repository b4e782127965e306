"""Run the example program branchtrace ships, which crashes, and show its crash report.

The example (a C file in the package) is compiled with gcc on first use into
~/.cache/branchtrace/demo. Equivalent to: branchtrace run --last 12 -- demo_crash
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ..backends import Target
from ..errors import TargetError
from ._record import add_record_arguments, check_before_start, record_and_report

NAME = "demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_record_arguments(p)
    p.set_defaults(last=12)


def build_example(cache: Path | None = None) -> Path:
    """Compile the shipped example if needed; return the executable's path."""
    source = resources.files("branchtrace").joinpath("examples/demo_crash.c").read_bytes()
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "branchtrace" / "demo"
    exe = base / "demo_crash"
    src = base / "demo_crash.c"
    if exe.exists() and src.exists() and src.read_bytes() == source:
        return exe
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise TargetError("the demo needs a C compiler (gcc or cc) to build its example")
    base.mkdir(parents=True, exist_ok=True)
    src.write_bytes(source)
    result = subprocess.run([compiler, "-g", "-O0", "-o", str(exe), str(src)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["unknown error"])[0]
        raise TargetError(f"could not compile the demo example: {first}")
    return exe


def main(args: argparse.Namespace) -> int:
    check_before_start(args)
    exe = build_example()
    print(f"branchtrace demo: running {exe} (it crashes on purpose)", flush=True)
    return record_and_report(args, Target(argv=(str(exe),), disable_aslr=args.disable_randomization))
