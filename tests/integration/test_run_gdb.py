"""`branchtrace run --gdb`: at a crash the program is stopped before the signal is
delivered, our tracing gone, and GDB attaches to it with the trace loaded; here GDB runs
in batch mode (--gdb-args), so `bt` is the live program's and `bt-calls` the trace's.
When GDB quits, the crash happens and run exits with the program's status."""

from __future__ import annotations

import os
import re
import select
import shutil
import sys
import time

import pytest
from conftest import cli

from branchtrace.backends.linux.permissions import has_cap_sys_ptrace, ptrace_scope

_SCOPE = ptrace_scope()
needs_gdb = [
    pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb"),
    pytest.mark.skipif(_SCOPE == 3 or (_SCOPE == 2 and not has_cap_sys_ptrace()),
                       reason=f"kernel.yama.ptrace_scope = {_SCOPE}: gdb cannot attach"),
]
BACKENDS = [pytest.param("ptrace", marks=[pytest.mark.backend("ptrace"), *needs_gdb]),
            pytest.param("stalker", marks=[pytest.mark.backend("stalker"), *needs_gdb])]


def run_gdb(backend: str, *argv: str, gdb: str = "-ex bt -ex 'bt-calls 6'",
            options: tuple[str, ...] = ()):
    return cli("run", "--backend", backend, "--report", "never", *options, "--gdb",
               "--gdb-args", f"-batch -nx {gdb}", "--", *argv, timeout=240)


def frames(stdout: str) -> list[str]:
    """The function of each frame of GDB's bt, innermost first."""
    return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", stdout, re.M)


def trace_file(stderr: str) -> str:
    found = re.search(r"with the trace (\S+) loaded", stderr)
    assert found, stderr
    return found.group(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bt_is_the_crash_and_bt_calls_the_trace(backend, build):
    r = run_gdb(backend, str(build("crash")))
    assert r.returncode == 139, r.stderr               # SIGSEGV, delivered after gdb
    assert "stopped before SIGSEGV was delivered" in r.stderr
    assert frames(r.stdout)[:3] == ["step2", "step1", "main"], r.stdout
    calls = r.stdout[r.stdout.index("bt-calls") if "bt-calls" in r.stdout else 0:]
    # bt-calls: function-call-history, one numbered segment a line, the last three ours
    segments = re.findall(r"^\d+\t(\S+)", calls, re.M)
    assert segments[-3:] == ["main", "step1", "step2"], r.stdout
    assert not os.path.exists(trace_file(r.stderr))   # the temporary trace is removed


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_in_a_thread_selects_that_thread(backend, build):
    r = run_gdb(backend, str(build("crash_cases")), "thread", gdb="-ex bt")
    assert r.returncode == 139, r.stderr
    assert frames(r.stdout)[:2] == ["null_write", "second"], r.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_abort_is_held_and_sent_again(backend, build):
    r = run_gdb(backend, str(build("assert_deep")), "toolong", gdb="-ex bt")
    assert r.returncode == 134, r.stderr               # SIGABRT, sent again after gdb
    assert "stopped before SIGABRT was delivered" in r.stderr
    assert {"raise", "abort", "__GI_raise", "__GI_abort"} & set(frames(r.stdout)), r.stdout
    # past abort (whose return address Frida's Interceptor had replaced: crash.js puts
    # the real one back before the hold) to the assert's function and main
    assert frames(r.stdout)[-3:] == ["check", "outer", "main"], r.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_o_keeps_the_trace_gdb_loaded(backend, build, tmp_path):
    out = tmp_path / "crash.btrace"
    r = run_gdb(backend, str(build("crash")), gdb="-ex bt-stats", options=("-o", str(out)))
    assert r.returncode == 139, r.stderr
    assert trace_file(r.stderr) == str(out) and out.is_file()
    assert f"branchtrace: {out} loaded" in r.stdout
    assert "SIGSEGV" in cli("crash", str(out)).stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_crash_no_gdb(backend, build):
    r = run_gdb(backend, str(build("fib")))
    assert r.returncode == 0, r.stderr
    assert "gdb" not in r.stderr and r.stdout == ""


def test_without_gdb_one_line_before_anything_runs(build, tmp_path):
    marker = tmp_path / "ran"
    r = cli("run", "--gdb", "--", "/bin/sh", "-c", f"touch {marker}",
            env={**os.environ, "PATH": str(tmp_path)})
    assert r.returncode == 125                         # run's own failure (cli/__init__.py)
    assert r.stderr.strip() == "branchtrace: error: --gdb: gdb is not installed (not found on PATH)"
    assert not marker.exists()


def test_gdb_args_need_gdb():
    r = cli("run", "--gdb-args=-batch", "--", "/bin/true")
    assert r.returncode == 125 and "--gdb-args needs --gdb" in r.stderr


@pytest.mark.backend("ptrace")
@pytest.mark.parametrize("_", [pytest.param(0, marks=needs_gdb)])
def test_ctrl_c_in_gdb_reaches_gdb_only(_, build):
    """At a terminal, Ctrl-C at GDB's prompt must not reach the stopped program (in
    branchtrace's process group), or it dies of SIGINT (130) instead of its crash."""
    import pty

    crash = str(build("crash"))
    pid, fd = pty.fork()
    if pid == 0:   # the child: branchtrace on the pty, its process group the foreground
        os.execv(sys.executable, [sys.executable, "-m", "branchtrace", "run", "--backend",
                                  "ptrace", "--report", "never", "--gdb", "--gdb-args",
                                  "-nx -iex 'set pagination off'", "--", crash])
    seen = b""

    def until(pattern: bytes, limit: float = 120.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + limit
        while pattern not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        until(b"(gdb) ")
        seen = b""
        os.write(fd, b"\x03")           # Ctrl-C: gdb says Quit, gets a new prompt
        until(b"(gdb) ")
        os.write(fd, b"bt 1\n")
        until(b"step2")
        os.write(fd, b"quit\n")
        until(b"(y or n)")
        os.write(fd, b"y\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 139, seen.decode(errors="replace")
