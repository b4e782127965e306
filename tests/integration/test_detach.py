"""Interrupting branchtrace, or attaching and detaching, never stops or kills the program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_ctrl_c_detaches_and_the_program_goes_on(build, tmp_path):
    exe = build("sleeper")
    out, report = tmp_path / "out", tmp_path / "report.json"
    # a new session: branchtrace and its program share a process group, as at a terminal
    tracer = subprocess.Popen(
        [sys.executable, "-m", "branchtrace", "run", "--backend", "ptrace", "--format", "json",
         "--report-to", str(report), "--", str(exe), str(out), "40"],
        start_new_session=True, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert tracer.poll() is None
    os.killpg(tracer.pid, signal.SIGINT)  # what Ctrl-C at the terminal does
    _, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 130, err
    assert "Traceback" not in err
    doc = json.loads(report.read_text())
    assert doc["exit"]["status"] == "detached"
    assert doc["branches"], "it recorded something before the interrupt"
    assert state_of(doc["pid"]) not in ("T", "t")  # not left stopped
    assert wait_for(out).startswith("finished")  # it went on to its normal end


def test_attach_for_a_while_then_detach(build, tmp_path):
    exe = build("sleeper")
    out, report = tmp_path / "out", tmp_path / "report.json"
    program = subprocess.Popen([str(exe), str(out), "40"])
    try:
        time.sleep(0.3)
        result = subprocess.run(
            [sys.executable, "-m", "branchtrace", "attach", str(program.pid), "--duration", "0.5",
             "--backend", "ptrace", "--report", "always", "--format", "json",
             "--report-to", str(report)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        doc = json.loads(report.read_text())
        assert doc["exit"]["status"] == "detached" and doc["pid"] == program.pid
        functions = {b["from"]["function"] for b in doc["branches"]}
        assert functions & {"main", "nanosleep", "clock_nanosleep", "__GI___clock_nanosleep"}
        assert program.wait(timeout=60) == 0
    finally:
        if program.poll() is None:
            program.kill()
    assert wait_for(out).startswith("finished")
