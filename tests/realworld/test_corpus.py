"""Real programs behave under the stalker backend exactly as they do natively.

For every case of ``corpus.py``, in ring and stream mode: stdout, stderr and the exit
status are byte-identical to a native run of the same command on the same inputs, the
trace holds branches of the program's own executable (not only of libc and the loader),
the exit it records is the real one, and stream mode loses nothing. For a case that forks
or execs, every process a native run makes (counted by strace) is in the trace.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import branchtrace
from branchtrace.trace import Trace

from .conftest import need_case, table_file
from .corpus import CASES, Case
from .harness import Outcome, Workspace, argv0_counts

pytestmark = pytest.mark.backend("stalker")

MODES = ("ring", "stream")

#: Branches from the program's own code that prove it was recorded, in stream mode (every
#: case runs far more: the fewest, `sh -c` of a pipeline, about 3000). Ring mode keeps only
#: the newest records of each thread, and those are mostly the exit path (for python3, the
#: last 35K branches are OpenSSL's and libc's teardown): there the program's code must be
#: in the window at all, and the records written (the overwritten ones included) many.
MIN_OWN_BRANCHES = {"stream": 200, "ring": 1}
MIN_WRITTEN = 5000


def _params(with_children: bool = False) -> Iterator[Any]:
    for case in CASES:
        if with_children and not case.children:
            continue
        for mode in MODES:
            marks = [pytest.mark.xfail(strict=True, reason=reason)
                     for m, reason in case.known_bug if m == mode and not with_children]
            yield pytest.param(case, mode, id=f"{case.name}-{mode}", marks=marks)


def _differ(what: str, native: bytes, traced: bytes) -> str:
    """Where ``traced`` departs from ``native``: sizes, first differing byte, and a
    short diff of the text around it."""
    at = next((i for i, (a, b) in enumerate(zip(native, traced)) if a != b),
              min(len(native), len(traced)))
    lines = list(difflib.unified_diff(
        native.decode(errors="replace").splitlines()[:4000],
        traced.decode(errors="replace").splitlines()[:4000],
        "native", "traced", lineterm="", n=1))
    return (f"{what} differs: native {len(native)} bytes, traced {len(traced)} bytes, first "
            f"difference at byte {at}\n" + "\n".join(lines[:40]))


def assert_same(native: Outcome, traced: Outcome) -> None:
    problems = []
    if traced.returncode != native.returncode:
        problems.append(f"exit status: native {native.returncode}, traced {traced.returncode}")
    for what in ("stdout", "stderr"):
        a, b = getattr(native, what), getattr(traced, what)
        if a != b:
            problems.append(_differ(what, a, b))
    assert not problems, "\n".join(problems)


def own_branches(trace: Trace, pattern: str) -> int:
    """Branches recorded from inside a module whose file name matches ``pattern``."""
    ranges = [(m.start, m.end) for m in trace.modules
              if fnmatch.fnmatch(os.path.basename(m.path), pattern)]
    assert ranges, (f"no module matching {pattern} among "
                    f"{sorted({os.path.basename(m.path) for m in trace.modules})}")
    count = 0
    for branches in trace.threads.values():
        ip = branches["from_ip"]
        for start, end in ranges:
            count += int(np.count_nonzero((ip >= start) & (ip < end)))
    return count


def _record(config: pytest.Config, row: dict[str, Any]) -> None:
    path = table_file(config)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


@pytest.mark.parametrize(("case", "mode"), list(_params()))
def test_same_as_native(request: pytest.FixtureRequest, workspace: Workspace, case: Case,
                        mode: str) -> None:
    need_case(request.config, case)
    native = workspace.native(case)
    # The case does something worth comparing (a program that printed nothing and exited
    # 0 would compare equal to a run that never started it).
    assert native.stdout or native.stderr or native.returncode != 0, \
        f"{case.name}: the native run printed nothing"
    traced = workspace.traced(case, mode)
    assert_same(native, traced.outcome)

    trace = branchtrace.open(traced.trace_file)
    assert (trace.backend, trace.mode) == ("stalker", mode)
    assert (trace.exit.status, trace.exit.code) == ("exited", native.returncode)
    own = own_branches(trace, case.main_module)
    assert own >= MIN_OWN_BRANCHES[mode], f"only {own} branches in {case.main_module}"
    written = sum(trace.written.values())
    assert written >= MIN_WRITTEN, f"only {written} records written"
    lost = sum(trace.lost.values())
    if mode == "stream":
        assert lost == 0 and trace.gaps == [], f"stream mode lost {lost}, gaps {trace.gaps}"
    processes = getattr(trace, "processes", None)
    if table_file(request.config):
        native_procs = (len(workspace.native_processes(case))
                        if shutil.which("strace", path="/usr/bin:/bin") else None)
    _record(request.config, {
        "case": case.name, "package": case.package, "mode": mode,
        "command": " ".join(case.argv), "children": case.children,
        "processes": len(processes) if processes is not None else None,
        "native_processes": native_procs if table_file(request.config) else None,
        "threads": len(trace.threads), "kept": trace.total(),
        "written": written, "lost": lost, "own": own,
        "native_s": round(native.wall, 3), "traced_s": round(traced.outcome.wall, 3),
        "notes": trace.notes, "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime())})


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_children_flag_matches_native(request: pytest.FixtureRequest, workspace: Workspace,
                                      case: Case) -> None:
    """The corpus says which cases fork or exec: strace on a native run agrees (and so
    the process counts the next test compares against are sound)."""
    need_case(request.config, case, "strace")
    procs = workspace.native_processes(case)
    # (strace may print no end for a process SIGPIPE kills at the end of a pipeline)
    assert procs[0].ppid == 0 and procs[0].execs >= 1
    assert procs[0].exit == f"exited {workspace.native(case).returncode}", procs[0]
    starts_others = len(procs) > 1 or procs[0].execs > 1
    assert starts_others == case.children, \
        f"{case.name}: natively {len(procs)} processes, {procs[0].execs} execs in the first"


@pytest.mark.parametrize(("case", "mode"), list(_params(with_children=True)))
def test_every_process_traced(request: pytest.FixtureRequest, workspace: Workspace,
                              case: Case, mode: str) -> None:
    need_case(request.config, case, "strace")
    native = workspace.native_processes(case)
    trace = branchtrace.open(workspace.traced(case, mode).trace_file)
    processes = getattr(trace, "processes", None)
    assert processes is not None, "this Trace has no processes"
    assert len(processes) == len(native), \
        f"traced {[p.argv for p in processes]}, natively {[p.argv0 for p in native]}"
    assert argv0_counts([p.argv[0] if p.argv else "" for p in processes]) == \
        argv0_counts([p.argv0 for p in native])
    for p in processes:
        recorded = sum(len(trace.threads.get(t, ())) for t in p.threads)
        assert recorded > 0, f"process {p.pid} {p.argv}: no branches"
        if mode == "stream":
            assert sum(trace.lost.get(t, 0) for t in p.threads) == 0, f"process {p.pid}"
