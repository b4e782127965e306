"""Run a corpus case natively, under branchtrace, and under strace (to count its processes).

Every run of a case gets a fresh copy of the same inputs at the same path with the same
environment, so the only difference between a native and a traced run is the tracer.
Results are kept for the session: the output test and the process test of a case share
one traced run per mode.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import inputs
from .corpus import Case

NATIVE_TIMEOUT = 120
TRACED_TIMEOUT = 600   # below pytest's 900 s: a hang fails its own test, not the whole run


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    wall: float                      # seconds, for the table only (never asserted on)


@dataclass(frozen=True)
class Traced:
    outcome: Outcome
    trace_file: Path


@dataclass(frozen=True)
class NativeProcess:
    """One process of a native run, as strace saw it."""
    pid: int
    ppid: int
    argv0: str                       # argv[0] of its last exec (its parent's if none)
    exit: str                        # "exited N" or "killed SIGX"
    execs: int                       # successful execve calls (the first process: strace's)


class Workspace:
    """The cases' directories under ``root``: ``NAME/template`` (the inputs, written once),
    ``NAME/run`` (a fresh copy for every run: the program's cwd), ``NAME/home``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._native: dict[str, Outcome] = {}
        self._traced: dict[tuple[str, str], Traced] = {}
        self._procs: dict[str, list[NativeProcess]] = {}

    def env(self, case: Case) -> dict[str, str]:
        env = inputs.base_env(self.root / case.name / "home")
        env.update({k: v for k, v in os.environ.items() if k.startswith("BRANCHTRACE_")})
        return env

    def fresh(self, case: Case) -> Path:
        """A fresh work directory for one run of ``case`` (always the same path)."""
        top = self.root / case.name
        template = top / "template"
        if not template.exists():
            building = top / "template.tmp"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            inputs.write(case.inputs, building, self.env(case))
            building.rename(template)
        run, home = top / "run", top / "home"
        for d in (run, home):
            shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(template, run, symlinks=True)
        home.mkdir()
        inputs.freeze(home)
        return run

    def _run(self, case: Case, argv: list[str], timeout: float) -> Outcome:
        run = self.fresh(case)
        stdin = open(run / case.stdin, "rb") if case.stdin else subprocess.DEVNULL
        try:
            start = time.monotonic()
            done = subprocess.run(argv, cwd=run, env=self.env(case), stdin=stdin,
                                  capture_output=True, timeout=timeout)
            wall = time.monotonic() - start
        finally:
            if case.stdin:
                stdin.close()  # type: ignore[union-attr]
        return Outcome(done.returncode, done.stdout, done.stderr, wall)

    def native(self, case: Case) -> Outcome:
        if case.name not in self._native:
            self._native[case.name] = self._run(case, list(case.argv), NATIVE_TIMEOUT)
        return self._native[case.name]

    def traced(self, case: Case, mode: str) -> Traced:
        key = (case.name, mode)
        if key not in self._traced:
            trace_file = self.root / case.name / f"trace-{mode}.btrace"
            argv = [sys.executable, "-m", "branchtrace", "run", "--backend", "stalker",
                    "--mode", mode, "--report", "never", "-o", str(trace_file),
                    "--", *case.argv]
            self._traced[key] = Traced(self._run(case, argv, TRACED_TIMEOUT), trace_file)
        return self._traced[key]

    def native_processes(self, case: Case) -> list[NativeProcess]:
        """The processes of a native run of ``case``, counted by ``strace -f``."""
        if case.name not in self._procs:
            out = self.root / case.name / "strace"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            argv = ["strace", "-f", "-ff", "-q", "-o", str(out / "p"), "-e", "signal=none",
                    "-e", "trace=execve,clone,clone3,fork,vfork", "--", *case.argv]
            done = self._run(case, argv, NATIVE_TIMEOUT)
            if done.returncode != self.native(case).returncode:
                raise AssertionError(f"under strace {case.name} exited {done.returncode}, "
                                     f"natively {self.native(case).returncode}")
            self._procs[case.name] = parse_strace(out, case.argv[0])
        return self._procs[case.name]


_CLONE = re.compile(r"^(clone3?|fork|vfork)\((.*)\)\s+= (\d+)$")
_EXECVE = re.compile(r'^execve\("(?:[^"\\]|\\.)*", \["((?:[^"\\]|\\.)*)".*\) = 0$')
_EXIT = re.compile(r"^\+\+\+ (exited with (\d+)|killed by (SIG\w+)).* \+\+\+$")


def parse_strace(directory: Path, argv0: str) -> list[NativeProcess]:
    """The processes in the per-thread files ``strace -ff -o DIR/p`` wrote: a clone
    without CLONE_THREAD, a fork or a vfork makes a process; argv[0] is that of its last
    successful execve (inherited from its parent without one)."""
    lines = {int(p.name.split(".")[1]): p.read_text().splitlines()
             for p in directory.glob("p.*")}
    started = {pid for text in lines.values() for line in text
               for pid in [_clone_child(line)] if pid}
    threads_of: dict[int, int] = {}                  # tid -> its process's pid
    for tid, text in lines.items():
        for line in text:
            m = _CLONE.match(line)
            if m and "CLONE_THREAD" in m.group(2):
                threads_of[int(m.group(3))] = tid
    roots = [t for t in lines if t not in started and t not in threads_of]
    if len(roots) != 1:
        raise AssertionError(f"strace: {len(roots)} first processes in {directory}")

    def owner(tid: int) -> int:
        while tid in threads_of:
            tid = threads_of[tid]
        return tid

    procs: dict[int, NativeProcess] = {}
    order = [(roots[0], 0, argv0)]
    while order:
        pid, ppid, name = order.pop(0)
        exit_ = "unknown"
        execs = 0
        tids = [pid] + [t for t in lines if t != pid and owner(t) == pid]
        for tid in tids:
            for line in lines.get(tid, []):
                if (e := _EXECVE.match(line)):
                    name = e.group(1)
                    execs += 1
                elif (child := _clone_child(line)):
                    order.append((child, pid, name))
                elif tid == pid and (x := _EXIT.match(line)):
                    exit_ = f"exited {x.group(2)}" if x.group(2) else f"killed {x.group(3)}"
        procs[pid] = NativeProcess(pid, ppid, name, exit_, execs)
    return list(procs.values())


def _clone_child(line: str) -> int:
    """The pid a process-creating call on ``line`` returned (0: none)."""
    m = _CLONE.match(line)
    if m and "CLONE_THREAD" not in m.group(2):
        return int(m.group(3))
    return 0


def argv0_counts(names: list[str]) -> Counter[str]:
    return Counter(os.path.basename(n) for n in names)
