"""Interrupting branchtrace, or attaching and detaching, never stops or kills the program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs import proc_status, wait_for_status

# A program single-stepped by ptrace stops after every instruction, each stop a voluntary
# context switch; the sleeper alone makes one per round (at most 40 here), and the run at
# full speed to main a handful: more than this many means it is being stepped in main.
STEPPING = 1000


def _descendant(pid: int, name: str, timeout: float = 60) -> int:
    """The first process called ``name`` below ``pid``, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parent, names = {}, {}
        for d in Path("/proc").iterdir():
            status = proc_status(int(d.name)) if d.name.isdigit() else {}
            if status:
                parent[int(d.name)], names[int(d.name)] = int(status["PPid"]), status["Name"]
        below, todo = [], [pid]
        while todo:
            one = todo.pop()
            kids = [child for child, p in parent.items() if p == one]
            below += kids
            todo += kids
        for child in below:
            if names[child] == name:
                return child
        time.sleep(0.01)
    raise AssertionError(f"no process {name} below {pid}")


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
    program = _descendant(tracer.pid, exe.name)
    # traced, and being stepped (so recording), before the interrupt
    wait_for_status(program, lambda st: int(st["TracerPid"]) != 0
                    and int(st["voluntary_ctxt_switches"]) > STEPPING, "stepped by a tracer")
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
        # in main's loop (asleep in its nanosleep), not still in the dynamic loader
        wait_for_status(program.pid, lambda st: st["Name"] == exe.name
                        and st["State"].startswith("S"), "asleep in main's loop")
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
