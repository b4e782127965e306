"""The CLI imports only the module of the command it runs (cli/__init__.py)."""

from __future__ import annotations

import subprocess
import sys

from branchtrace.cli import COMMANDS, build_parser, command_module


def test_command_table_names_each_module() -> None:
    for name, _ in COMMANDS:
        assert command_module(name).NAME == name


def test_one_command_parses_as_with_all() -> None:
    words = ["run", "--report", "always", "--last", "4", "--", "prog", "-x"]
    assert vars(build_parser("run").parse_args(words)).keys() == \
        vars(build_parser().parse_args(words)).keys()
    one, full = build_parser("run").parse_args(words), build_parser().parse_args(words)
    assert {k: v for k, v in vars(one).items() if k != "handler"} == \
        {k: v for k, v in vars(full).items() if k != "handler"}


def test_run_imports_no_other_command_nor_numpy_before_parsing() -> None:
    code = ("import sys; from branchtrace import cli; from branchtrace.cli import _record; "
            "a = cli.build_parser('run').parse_args(['run', '--', 'true']); "
            "_record.check_before_start(a, 'true'); _record.trigger_of(a); "
            "print(sorted(m for m in sys.modules if m.startswith('branchtrace.cli.') "
            "or m == 'numpy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "branchtrace.cli.coverage" not in out and "branchtrace.cli.demo" not in out
    assert "'numpy'" not in out
    assert "branchtrace.cli.run" in out


def test_frida_loads_with_asyncio_deferred_and_asyncio_still_works() -> None:
    code = ("import sys\n"
            "from branchtrace.backends.stalker import fridaload\n"
            "from branchtrace.backends.stalker.fridaload import load\n"
            "fridaload.defer_asyncio = True\n"
            "try:\n    load()\nexcept ImportError:\n    print('no frida'); sys.exit(0)\n"
            "print(type(sys.modules['asyncio']).__name__)\n"
            "import asyncio\n"
            "async def two():\n    await asyncio.sleep(0)\n    return 2\n"
            "print(asyncio.run(two()), type(sys.modules['asyncio']).__name__)\n"
            "from asyncio import *\nprint(callable(sleep))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    if out == ["no", "frida"]:
        return
    assert out == ["_Deferred", "2", "module", "True"]


def test_the_api_imports_frida_as_usual() -> None:
    """Only the command line defers asyncio: a program using the API is left alone."""
    code = ("import sys\n"
            "from branchtrace.backends.stalker.fridaload import load\n"
            "try:\n    load()\nexcept ImportError:\n    print('no frida'); sys.exit(0)\n"
            "print(type(sys.modules['asyncio']).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    if out == ["no", "frida"]:
        return
    assert out == ["module"]
