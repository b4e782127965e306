"""branchtrace inside GDB: ``gdb -x "$(branchtrace gdb-init)"`` gives bt-load, bt-calls,
bt-insns, bt-crash and bt-stats, which say what the command line says, from a GDB whose
environment knows nothing of branchtrace's virtualenv."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import cli

pytestmark = [pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb"),
              pytest.mark.backend("ptrace")]


def gdb(*commands: str) -> subprocess.CompletedProcess[str]:
    init = cli("gdb-init").stdout.strip()
    argv = ["gdb", "-q", "-batch", "-nx", "-x", init]
    for c in commands:
        argv += ["-ex", c]
    # a bare environment: no virtualenv on PATH, no PYTHONPATH
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


@pytest.fixture(scope="module")
def crash_trace(build, tmp_path_factory):
    out = tmp_path_factory.mktemp("gdb") / "fib.btrace"
    r = cli("run", "--backend", "ptrace", "-o", str(out), "--", str(build("fib")), "crash")
    assert r.returncode == 139, r.stderr
    return out


def test_the_commands_say_what_the_command_line_says(crash_trace):
    r = gdb(f"bt-load {crash_trace}", "bt-calls 5", "bt-calls /l /i /c 3", "bt-insns /s 6",
            "bt-crash 4", "bt-stats", "bt-calls 2,4")
    assert r.returncode == 0, r.stderr
    expected = "".join([
        f"branchtrace: {crash_trace} loaded\n",
        cli("history", str(crash_trace), "--calls", "--last", "5", "--no-indent").stdout,
        cli("history", str(crash_trace), "--calls", "--last", "3", "--lines",
            "--insn-ranges").stdout,
        cli("history", str(crash_trace), "--insns", "--last", "6", "--source").stdout,
        cli("crash", str(crash_trace), "--last", "4").stdout,
        cli("stats", str(crash_trace)).stdout,
        cli("history", str(crash_trace), "--calls", "--range", "2,4", "--no-indent").stdout])
    assert r.stdout == expected
    assert "main" in r.stdout and "SIGSEGV" in r.stdout


def test_errors_are_gdb_errors(crash_trace, tmp_path):
    r = gdb("bt-calls")
    assert "no trace loaded: bt-load FILE first" in r.stderr
    r = gdb(f"bt-load {tmp_path / 'none.btrace'}")
    assert "none.btrace: no such file" in r.stderr
    r = gdb(f"bt-load {crash_trace}", "bt-calls /x", "bt-calls two")
    assert "unknown modifier /x" in r.stderr and "expected a count, FROM,TO or 'all'" in r.stderr
    junk = tmp_path / "junk.btrace"
    junk.write_text("not a trace")
    r = gdb(f"bt-load {junk}", "bt-stats")
    assert "branchtrace: error:" in r.stderr and "Traceback" not in r.stderr


def test_bt_load_pid_reads_that_process(build, tmp_path):
    out = tmp_path / "sh.btrace"
    r = cli("run", "--backend", "ptrace", "--start", "entry", "-o", str(out), "--", "/bin/sh",
            "-c", f"{build('fib')} crash; exit 3")
    assert r.returncode == 3, r.stderr
    pid = next(p.pid for p in __import__("branchtrace").open(str(out)).processes
               if p.exit.status == "signaled")
    r = gdb(f"bt-load {out} {pid}", "bt-calls 3", "bt-load x y")
    assert f"branchtrace: {out} loaded (pid {pid})\n" in r.stdout
    assert r.stdout.endswith(cli("history", str(out), "--pid", str(pid), "--calls", "--last",
                                 "3", "--no-indent").stdout)
    assert "usage: bt-load FILE [PID]" in r.stderr
