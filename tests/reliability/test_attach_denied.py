"""Attaching where the system forbids it: one line that names the reason, with each
backend, and the process left running, untouched (docs/security.md).

As root anything can be traced, so the refusals are made real with setpriv: branchtrace
as an unprivileged user against root's process, and root without CAP_SYS_PTRACE against
another user's process. The unprivileged branchtrace runs on an interpreter uid 65534
can execute (conftest.nobody_python: the tests fail under CI when there is none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS, cli, need_backend
from other_user import AS_NOBODY, NOBODY, SETPRIV
from procs import proc_status, real_uid, wait_for_status

ROOT = os.geteuid() == 0
DROP_PTRACE_CAP = ["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]


def _cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "branchtrace", *args]


def _as(setpriv_args: list[str], argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    env = {k: v for k, v in os.environ.items() if k != "BRANCHTRACE_BACKEND"}
    return subprocess.run([SETPRIV, *setpriv_args, *argv], capture_output=True, text=True,
                          timeout=60, cwd="/", env=env, check=False, **kw)  # type: ignore[call-overload]


def _untouched(pid: int) -> None:
    status = proc_status(pid)
    assert status["State"].split()[0] not in "tTZX" and int(status["TracerPid"]) == 0


def _nobodys_sleep() -> subprocess.Popen[bytes]:
    """``sleep 200`` as uid 65534, once setpriv has become that user and exec'd sleep."""
    target = subprocess.Popen([SETPRIV or "setpriv", *AS_NOBODY, "sleep", "200"])
    wait_for_status(target.pid, lambda st: st["Name"] == "sleep" and real_uid(st) == NOBODY,
                    f"sleep as uid {NOBODY}")
    return target
def _refusal(result: subprocess.CompletedProcess[str], pid: int) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot trace pid {pid}" in lines[0], result.stderr
    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope") and \
            Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() != "0":
        assert "/proc/sys/kernel/yama/ptrace_scope" in lines[0]
    return lines[0]


needs_root = pytest.mark.skipif(not ROOT or SETPRIV is None,
                                reason="needs root and setpriv to make a process of another user")


@needs_root
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_an_unprivileged_user_cannot_attach_to_roots_process(backend, build, tmp_path,
                                                             nobody_python):
    target = subprocess.Popen([str(build("sleeper")), str(tmp_path / "done"), "200"])
    try:
        line = _refusal(nobody_python.run(nobody_python.argv(
            "attach", "--backend", backend, str(target.pid), "--duration", "1")), target.pid)
        assert f"belongs to another user (uid {os.getuid()}" in line
        assert "CAP_SYS_PTRACE" in line
        _untouched(target.pid)
    finally:
        target.kill()
        target.wait()


@needs_root
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_without_cap_sys_ptrace_another_users_process_is_refused(backend):
    target = _nobodys_sleep()
    try:
        line = _refusal(_as(DROP_PTRACE_CAP, _cli_argv("attach", "--backend", backend,
                                                       str(target.pid), "--duration", "1")),
                        target.pid)
        assert f"belongs to another user (uid {NOBODY}" in line
        assert "lacks CAP_SYS_PTRACE" in line
        _untouched(target.pid)
    finally:
        target.kill()
        target.wait()


@needs_root
def test_stalker_says_why_it_cannot_record_another_users_process():
    """With CAP_SYS_PTRACE ptrace records it; the stalker backend cannot, since the
    process could not open our 0600 buffers: it says so and names the way out."""
    need_backend("stalker")
    target = _nobodys_sleep()
    try:
        result = cli("attach", "--backend", "stalker", str(target.pid), "--duration", "1")
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert f"another user (uid {NOBODY})" in lines[0] and "--backend ptrace" in lines[0]
        _untouched(target.pid)
    finally:
        target.kill()
        target.wait()
