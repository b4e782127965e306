"""run --gdb's pieces that need no program: GDB's command line, the extra arguments, and
the check that GDB could attach at all."""

from __future__ import annotations

import pytest

from branchtrace.backends.linux import permissions
from branchtrace.cli import _gdb
from branchtrace.errors import UsageError


def test_gdb_argv_loads_the_trace_and_attaches():
    argv = _gdb.gdb_argv("/usr/bin/gdb", "/c/init.py", "/t/x.btrace", 42, 42, ["-batch"])
    assert argv == ["/usr/bin/gdb", "-q", "-x", "/c/init.py", "-ex", "bt-load /t/x.btrace",
                    "-batch", "-p", "42"]


def test_gdb_argv_selects_the_crashed_thread():
    argv = _gdb.gdb_argv("gdb", "i", "t", 42, 43, [])
    select = argv[argv.index("bt-load t") + 2]
    assert "t.ptid[1] == 43" in select and argv[-2:] == ["-p", "42"]


def test_extra_args_split_as_a_shell_does(monkeypatch):
    monkeypatch.setenv(_gdb.ENV_GDB_ARGS, "-batch -ex 'bt full'")
    assert _gdb.gdb_extra_args(None) == ["-batch", "-ex", "bt full"]
    assert _gdb.gdb_extra_args("-ex bt") == ["-ex", "bt"]      # the option wins
    with pytest.raises(UsageError, match="--gdb-args: No closing quotation"):
        _gdb.gdb_extra_args("-ex 'bt")


@pytest.mark.parametrize("scope, cap, refused", [(None, False, False), (0, False, False),
                                                 (1, False, False), (2, True, False),
                                                 (2, False, True), (3, True, True)])
def test_yama_says_whether_gdb_can_attach(monkeypatch, scope, cap, refused):
    monkeypatch.setattr(permissions, "ptrace_scope", lambda: scope)
    monkeypatch.setattr(permissions, "has_cap_sys_ptrace", lambda: cap)
    if refused:
        with pytest.raises(UsageError, match=f"gdb could not attach.*ptrace_scope is {scope}"):
            _gdb.check_attach()
    else:
        _gdb.check_attach()


def test_a_trace_of_several_processes_is_read_for_the_held_one():
    argv = _gdb.gdb_argv("gdb", "i", "t", 42, 42, [], several=True)
    assert "bt-load t 42" in argv
