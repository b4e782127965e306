"""Bad input: one clear line, a non-zero exit, no traceback, and no program left stopped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import cli


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("branchtrace")
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["run", "--", "/nonexistent/program"], "not found"),
    (["run", "--", "no-such-program-xyz"], "not found"),
    (["run", "--", "/tmp"], "directory"),
    (["run", "--buffer", "abc", "--", "true"], "'abc'"),
    (["run", "--buffer", "0", "--", "true"], "'0'"),
    (["run", "--buffer", "-5", "--", "true"], "-5"),
    (["run", "--buffer", "100G", "--", "true"], "memory limit"),
    (["run", "--buffer", "1TiB", "--", "true"], "memory limit"),
    (["run", "--buffer", "1M", "--memory-limit", "1MiB", "--", "true"], "memory limit"),
    (["run", "--memory-limit", "lots", "--", "true"], "'lots'"),
    (["run", "--backend", "nosuch", "--", "true"], "unknown backend 'nosuch'"),
    (["run", "--mode", "circular", "--", "true"], "circular"),
    (["run", "--last", "0", "--", "true"], "'0'"),
    (["run", "--start", "no_such_function", "--", "/bin/true"], "no_such_function"),
    (["run"], "no program"),
    (["run", "--report-to", "/nonexistent/dir/r.json", "--", "true"], "no such directory"),
    (["attach", "999999999"], "999999999"),
    (["attach", "0"], "'0'"),
    (["attach", "abc"], "'abc'"),
    (["attach", str(os.getpid()), "--duration", "-1"], "-1"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input(args, words):
    result = cli(*args)
    line = one_line_error(result)
    assert words in line
    if args[0] in ("run", "attach"):      # they pass the program's status: ours are 125-127
        want = 127 if "not found" in words else 126 if words == "directory" else 125
        assert result.returncode == want, (args, result.returncode)


@pytest.mark.parametrize("backend", ["stalker", "ptrace"])
def test_run_exits_with_the_programs_status_and_its_own_are_apart(backend, tmp_path):
    """The program's 2-6 and 70 are its own; branchtrace's failures are 125-127."""
    for code in (0, 2, 3, 4, 5, 6, 70, 124):
        r = cli("run", "--backend", backend, "--", "/bin/sh", "-c", f"exit {code}")
        assert r.returncode == code, (code, r.stderr)
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    assert cli("run", "--backend", backend, "--", str(script)).returncode == 126
    assert cli("run", "--backend", backend, "--", str(tmp_path / "gone")).returncode == 127
    assert cli("run", "--backend", backend, "--bogus", "--", "true").returncode == 125


def test_version_and_attach_dash_p():
    from branchtrace import __version__
    r = cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"branchtrace {__version__}")
    sleeper = subprocess.Popen(["sleep", "20"])
    try:
        r = cli("attach", "-p", str(sleeper.pid), "--duration", "0.2", "--report", "always")
        assert r.returncode == 0 and f"(pid {sleeper.pid})" in r.stderr, r.stderr
        assert sleeper.poll() is None                       # still running
        line = one_line_error(cli("attach", "-p", str(sleeper.pid), str(sleeper.pid + 1)))
        assert "two pids" in line
        assert "pid is required" in one_line_error(cli("attach"))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_over_the_limit_fails_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    result = cli("run", "--buffer", "1TiB", "--", "/bin/sh", "-c", f"touch {marker}")
    one_line_error(result)
    assert not marker.exists()


def test_pid_that_cannot_be_traced(build, tmp_path):
    """A process already under another tracer: say who, leave it running."""
    exe = build("sleeper")
    target = subprocess.Popen([str(exe), str(tmp_path / "out"), "10"])
    holder = subprocess.Popen(
        ["python3", "-c",
         "import ctypes,sys,time; libc=ctypes.CDLL(None, use_errno=True);"
         "libc.ptrace.argtypes=[ctypes.c_long,ctypes.c_long,ctypes.c_void_p,ctypes.c_void_p];"
         f"r=libc.ptrace(0x4206,{target.pid},None,None); print(r, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        line = one_line_error(cli("attach", str(target.pid), "--duration", "1"))
        assert f"cannot trace pid {target.pid}" in line and "already traced" in line
    finally:
        holder.kill()
        holder.wait()
    assert target.wait(timeout=30) == 0
    assert (tmp_path / "out").read_text().startswith("finished")


def test_cannot_trace_ourselves():
    # the CLI runs in a child: give it its own pid through the shell
    result = subprocess.run(
        ["sh", "-c", f'exec {sys.executable} -m branchtrace attach $$'], capture_output=True, text=True,
        timeout=60)
    line = one_line_error(result)
    assert "itself" in line


def test_doctor_lists_ptrace():
    result = cli("doctor")
    assert result.returncode == 0
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
            if line and not line.startswith((" ", "(", "auto"))}
    assert rows["ptrace"] == "yes"
    first_available = next(name for name, ok in rows.items() if ok == "yes")
    assert f"auto chooses: {first_available}" in result.stdout


def test_env_override_unknown_backend():
    env = dict(os.environ, BRANCHTRACE_BACKEND="bogus")
    result = subprocess.run([sys.executable, "-m", "branchtrace", "run", "--", "true"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert "unknown backend 'bogus'" in one_line_error(result)
