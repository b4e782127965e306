"""Bad input that reaches a backend, a live process or another user: through ``python -m
branchtrace``, one clear line on stderr, a non-zero exit, never a traceback. The
in-process table of every command x bad option is tests/reliability/test_bad_input.py,
whose fixture and checks this module shares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS, cli
from test_bad_input import Env, _record_args, _state, assert_one_line, make_env




@pytest.fixture(scope="module")
def env(build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from make_env(build, tmp_path_factory)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("program, words", [
    ("{root}/no-such-program", "not found"),
    ("{root}/adir", "directory"),
    ("{root}/notexec", "permission denied"),
    ("{root}/empty.btrace", "permission denied"),
], ids=str)
def test_run_refuses_what_cannot_run(env, backend, program, words):
    assert_one_line(*_child(["run", "--backend", backend, "--", program.format(root=env.root)]),
                    words)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_attach_to_a_pid_that_is_gone(env, backend):
    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid in (gone.pid, 2**22 + 1, 2**31, 10**30):
        line = assert_one_line(*_child(["attach", "--backend", backend, str(pid)]), str(pid))
        assert "no process" in line


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_attach_to_a_kernel_thread(backend):
    status = Path("/proc/2/status")
    if not status.exists() or "PPid:\t0" not in status.read_text():
        pytest.skip("pid 2 is not kthreadd here (a pid namespace)")
    line = assert_one_line(*_child(["attach", "--backend", backend, "2", "--duration", "1"]),
                           "cannot trace pid 2")
    assert "kernel thread" in line


ZOMBIE_PARENT = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os._exit(0)
print(pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_attach_to_a_zombie(backend):
    parent = subprocess.Popen([sys.executable, "-c", ZOMBIE_PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        line = assert_one_line(*_child(["attach", "--backend", backend, str(pid),
                                        "--duration", "1"]), f"cannot trace pid {pid}")
        assert "zombie" in line
    finally:
        parent.communicate("")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("command", ["run", "attach"])
def test_unwritable_trace_file(env, tmp_path, backend, command):
    marker = tmp_path / "ran"
    args = _record_args(env, command, ["--backend", backend, "-o", "/proc/version"], marker)
    assert_one_line(*_child(args), "cannot write the trace file /proc/version")
    assert not marker.exists()
    assert _state(env.target.pid)[1] == 0


def test_unwritable_report_after_the_run(build):
    """The program has run; the report cannot be written: one line, and the exit status
    is still the program's (issue 13: a report that cannot be made must not hide how
    the program ended): loop exits 0, so does branchtrace."""
    code, err = _child(["run", "--backend", "ptrace", "--report", "always",
                        "--report-to", "/proc/version", "--", str(build("loop")), "3"])
    assert code == 0
    assert err.splitlines() == ["branchtrace: the report could not be made: cannot write the "
                                "report to /proc/version: Input/output error"], err


def test_same_errors_through_python_m(env):
    """The entry point the user runs answers like main() does (a sample of the table)."""
    for args, words in ((["stats", str(env.bad["newer"])], "newer"),
                        (["run", "--buffer", "-5", "--", "true"], "-5"),
                        (["crash", str(env.trace), "--thread", "0"], "'0'")):
        assert_one_line(*_child(args), words)


def _child(args: list[str]) -> tuple[int, str]:
    result = cli(*args, timeout=60)
    return result.returncode, result.stderr


def test_files_another_user_may_not_read_or_write(env, build, nobody_python):
    """As an unprivileged user (an interpreter uid 65534 can run: conftest.nobody_python):
    root's 0600 trace file, and outputs in root's directory."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="bt-badinput-"))
    try:
        shared.chmod(0o755)                     # others may enter, not write
        secret = shared / "secret.btrace"
        secret.write_bytes(env.trace.read_bytes())
        secret.chmod(0o600)
        public = shared / "public.btrace"
        public.write_bytes(env.trace.read_bytes())
        public.chmod(0o644)
        loop = shared / "loop"
        loop.write_bytes(build("loop").read_bytes())
        loop.chmod(0o755)
        for args, words in (
                (["stats", str(secret)], "permission denied"),
                (["stats", str(public), "-o", str(shared / "out.txt")], "cannot write"),
                (["run", "--backend", "ptrace", "-o", str(shared / "t.btrace"), "--", str(loop),
                  "3"], "cannot write the trace file"),
                (["run", "--backend", "ptrace", "--report-to", str(shared / "r.txt"), "--",
                  str(loop), "3"], "--report-to"),
        ):
            result = nobody_python.run(nobody_python.argv(*args))
            assert_one_line(result.returncode, result.stderr, words)
        assert sorted(p.name for p in shared.iterdir()) == ["loop", "public.btrace",
                                                             "secret.btrace"]
    finally:
        shutil.rmtree(shared)
