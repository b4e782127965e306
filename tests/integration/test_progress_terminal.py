"""Progress of a read on a terminal: `stats` and `coverage` with stderr on a
pseudo-terminal show a tqdm bar (the delay set to 0 so that a small trace is 'slow
enough'), and leave stdout as it is; on a pipe nothing extra reaches stderr."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import cli

pytestmark = pytest.mark.backend("ptrace")

COMMANDS = {"stats": [], "coverage": ["--format", "json", "-o", "-"]}


@pytest.fixture(scope="module")
def trace(build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "loop.btrace"
    r = cli("run", "--backend", "ptrace", "-o", str(path), "--", str(build("loop")), "300")
    assert r.returncode == 0, r.stderr
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if k not in ("BRANCHTRACE_NO_PROGRESS", "BRANCHTRACE_PROGRESS_DELAY")}
    out.update(extra, TERM="xterm")
    return out


def on_terminal(args: list[str], environ: dict[str, str]) -> tuple[int, str, bytes]:
    """Run branchtrace ARGS with stderr on a pseudo-terminal of 100 columns: its exit
    status, stdout (a pipe) and what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "branchtrace", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env=environ)
    os.close(slave)
    seen = b""
    while True:
        try:
            got = os.read(master, 1 << 16)
        except OSError:             # EIO: the last writer closed the terminal
            break
        if not got:
            break
        seen += got
    out = p.stdout.read().decode() if p.stdout else ""
    os.close(master)
    return p.wait(timeout=120), out, seen


@pytest.mark.parametrize("command", COMMANDS)
def test_a_terminal_shows_progress(trace: Path, command: str) -> None:
    pytest.importorskip("tqdm")
    args = [command, str(trace), *COMMANDS[command]]
    plain = cli(*args, env=env())
    code, out, seen = on_terminal(args, env(BRANCHTRACE_PROGRESS_DELAY="0"))
    assert code == 0 == plain.returncode
    assert b"branchtrace: reading" in seen and b"100%" in seen, seen
    assert seen.endswith(b"\r"), seen            # and the line is cleared at the end
    assert out == plain.stdout                   # the report is the same


@pytest.mark.parametrize("command", COMMANDS)
def test_not_on_a_pipe_nor_when_asked_not_to(trace: Path, command: str) -> None:
    args = [command, str(trace), *COMMANDS[command]]
    plain = cli(*args, env=env())
    hurried = cli(*args, env=env(BRANCHTRACE_PROGRESS_DELAY="0"))
    assert hurried.returncode == 0 and hurried.stderr == plain.stderr
    assert hurried.stdout == plain.stdout
    code, _, seen = on_terminal(args, env(BRANCHTRACE_PROGRESS_DELAY="0",
                                          BRANCHTRACE_NO_PROGRESS="1"))
    assert code == 0 and b"reading" not in seen
