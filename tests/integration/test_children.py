"""Children are traced (issue 12 item 3): every process the program starts is in the
trace with its own threads, modules and exit; readers select one with --pid; a crash
in a child gets its report while the exit status stays the first process's.

tests/fixtures/proc_fork_n.c forks N children; child k calls work() exactly k + 1 times
and exits with status k; the parent then calls work() PARENT_CALLS times. The counts
below are exact: the ptrace backend records every branch.

Both backends run every case that does not need ptrace's own view (TracerPid).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from branchtrace.backends import Target
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from branchtrace.trace import Trace
from branchtrace.tracefile import open_trace

from conftest import cli

N = 3
PARENT_CALLS = 3
BACKENDS = ["ptrace", "stalker"]


def calls_to(trace: Trace, function: str) -> int:
    """Calls (direct or not) to the start of ``function``, symbolized with the trace's
    own modules (a per-process trace)."""
    n = 0
    for branches in trace.threads.values():
        calls = branches[np.isin(branches["kind"], (BranchKind.CALL, BranchKind.INDIRECT_CALL))]
        to = trace.symbolizer.resolve(calls["to_ip"])
        names = np.array(to.function_names + ("",))[to.function]
        n += int(((names == function) & (to.offset == 0)).sum())
    return n


def traced(argv: tuple[str, ...], **config: object) -> tuple[Trace, bytes]:
    """Record ``argv`` with its stdout captured through a temporary file."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            trace = record(Target(argv=argv), RecordConfig(**config))  # type: ignore[arg-type]
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        return trace, out.read()


def check_fork_n(trace: Trace, exe: Path) -> None:
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert len(trace.processes) == N + 1
    parent, children = trace.processes[0], trace.processes[1:]
    assert parent.pid == trace.pid and parent.ppid == 0 and parent.argv == (str(exe), str(N))
    assert calls_to(trace.for_pid(parent.pid), "work") == PARENT_CALLS
    # child k (it exits with status k) called work k + 1 times. The list is in the order
    # the backend caught them: the stalker backend's catchers may finish out of fork order
    # on a busy machine, so each child is told by its status, and every k is there once.
    assert sorted(c.exit.code for c in children) == list(range(N))
    for child in children:
        k = child.exit.code
        assert child.ppid == parent.pid and child.argv == parent.argv
        assert child.exit.status == "exited" and k is not None
        assert child.threads == (child.pid,)
        view = trace.for_pid(child.pid)
        assert list(view.threads) == [child.pid]
        assert calls_to(view, "work") == k + 1, f"child {k}"
    # every thread belongs to exactly one process
    owners = [trace.process_of(tid).pid for tid in trace.threads]
    assert sorted(owners) == sorted([parent.pid] + [c.pid for c in children])


@pytest.mark.parametrize("mode", ["ring", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_child_makes_exactly_its_calls(build, backend, mode):
    exe = build("proc_fork_n")
    trace, out = traced((str(exe), str(N)), backend=backend, mode=mode)
    assert out == b"children 3 sum 3\n"
    check_fork_n(trace, exe)
    if mode == "stream":    # lossless, children too
        assert trace.gaps == []
        assert all(trace.lost.get(tid, 0) == 0 for tid in trace.threads)
        if backend == "ptrace":   # one record per branch
            assert all(trace.written[tid] == len(b) for tid, b in trace.threads.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_file_holds_every_process(build, backend, tmp_path):
    exe = build("proc_fork_n")
    path = tmp_path / "fork.btrace"
    done = cli("run", "--backend", backend, "--mode", "stream", "-o", str(path), "--",
               str(exe), str(N))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "children 3 sum 3\n"
    check_fork_n(open_trace(path), exe)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_follow_children_traces_the_program_only(build, backend):
    exe = build("proc_fork_n")
    trace, out = traced((str(exe), str(N)), backend=backend, mode="stream",
                        follow_children=False)
    assert out == b"children 3 sum 3\n" and trace.exit.code == 0
    assert [p.pid for p in trace.processes] == [trace.pid]
    assert list(trace.threads) == [trace.pid]
    assert calls_to(trace, "work") == PARENT_CALLS
    assert [n for n in trace.notes if re.match(rf"{N} child processes ran untraced", n)]


# ---- the readers, on one recording ------------------------------------------------------

@pytest.fixture(scope="module")
def fork_file(build, tmp_path_factory) -> tuple[Path, Trace]:
    exe = build("proc_fork_n")
    path = tmp_path_factory.mktemp("children") / "fork.btrace"
    done = cli("run", "--backend", "ptrace", "-o", str(path), "--", str(exe), str(N))
    assert done.returncode == 0, done.stderr
    return path, open_trace(path)


@pytest.mark.backend("ptrace")
def test_sql_places_every_thread_in_its_process(fork_file):
    """sql's processes and the pid of each branch come from the file's PROCESS records:
    the per-process counts equal the Trace's, and ppid and exit are each process's."""
    path, trace = fork_file
    done = cli("sql", str(path), "select pid, count(*) from branches group by pid order by pid",
               "--format", "csv")
    assert done.returncode == 0, done.stderr
    got = {int(a): int(b) for a, b in (line.split(",") for line in done.stdout.split()[1:])}
    assert got == {p.pid: trace.for_pid(p.pid).total() for p in trace.processes}
    done = cli("sql", str(path), "select pid, ppid, exit_code from processes order by pid",
               "--format", "csv")
    rows = [tuple(map(int, line.split(","))) for line in done.stdout.split()[1:]]
    assert rows == sorted((p.pid, p.ppid, p.exit.code) for p in trace.processes)


@pytest.mark.backend("ptrace")
def test_stats_lists_the_processes(fork_file):
    path, trace = fork_file
    done = cli("stats", str(path))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"processes: {N + 1}" in text
    rows = [line.split() for line in text.splitlines()
            if "exited with status" in line and not line.startswith("trace:")]
    table = {int(r[0]): r for r in rows}
    assert sorted(table) == sorted(trace.pids)
    for k, p in enumerate(trace.processes):
        row = table[p.pid]
        assert row[1] == (str(p.ppid) if p.ppid else "-")
        assert row[2] == "1" and int(row[3]) == trace.for_pid(p.pid).total()
        assert " ".join(row[4:8]) == f"exited with status {0 if k == 0 else k - 1}"
    doc = json.loads(cli("stats", str(path), "--format", "json", "--top", "1000").stdout)
    assert [p["pid"] for p in doc["processes"]] == trace.pids
    assert doc["records"] == trace.total()
    # functions merged over the processes: work ran 1 + 2 + 3 + 3 times
    work = [f for f in doc["functions"] if f["name"] == "work"]
    assert work and work[0]["calls"] == sum(range(1, N + 1)) + PARENT_CALLS


@pytest.mark.backend("ptrace")
@pytest.mark.parametrize("command", ["stats", "history", "crash", "profile", "coverage"])
def test_every_reader_selects_a_pid(fork_file, command, tmp_path):
    path, trace = fork_file
    child = trace.processes[2]                 # the second child: work twice, exit 1
    extra = {"profile": ["--format", "collapsed"],
             "coverage": ["--format", "json", "-o", str(tmp_path / "c.json")],
             "stats": ["--format", "json"], "crash": ["--format", "json"]}.get(command, [])
    done = cli(command, str(path), "--pid", str(child.pid), *extra)
    assert done.returncode == 0, done.stderr
    if command == "stats":
        doc = json.loads(done.stdout)
        assert doc["pid"] == child.pid and doc["records"] == trace.for_pid(child.pid).total()
        assert [p["pid"] for p in doc["processes"]] == [child.pid]
    elif command == "crash":
        doc = json.loads(done.stdout)
        assert doc["pid"] == child.pid and doc["exit"] == {"status": "exited", "code": 1}
    elif command == "history":
        assert "process " not in done.stdout                # one process: no headings
        assert done.stdout.count("work") == 2
    elif command == "profile":
        assert sum(int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()) \
            == trace.for_pid(child.pid).total()
    else:
        doc = json.loads((tmp_path / "c.json").read_text())
        assert doc["summary"]["branches"] == trace.for_pid(child.pid).total()
    bad = cli(command, str(path), "--pid", "1", *extra)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (f"branchtrace: error: no process 1 in this trace (its "
                                  f"processes: {', '.join(str(p) for p in trace.pids)})")


@pytest.mark.backend("ptrace")
def test_readers_cover_every_process_by_default(fork_file, tmp_path):
    path, trace = fork_file
    history = cli("history", str(path)).stdout
    for p in trace.processes:
        assert f"process {p.pid} (parent {p.ppid or '-'}): " in history
    assert history.count("work") == sum(range(1, N + 1)) + PARENT_CALLS
    out = tmp_path / "all.json"
    assert cli("coverage", str(path), "--format", "json", "-o", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    assert doc["summary"]["branches"] == trace.total()
    # the union: one module for the program, whose work block ran in every process
    exe = [m for m in doc["modules"] if m["path"] == trace.processes[0].argv[0]]
    assert len(exe) == 1
    work = trace.symbolizer.symbol_address(None, "work")
    assert work is not None
    hits = [b[2] for b in exe[0]["blocks"] if b[0] == work - int(exe[0]["start"], 0)]
    assert hits == [sum(range(1, N + 1)) + PARENT_CALLS]
    perfetto = json.loads(cli("profile", str(path), "--format", "perfetto").stdout)
    pids = {e["pid"] for e in perfetto["traceEvents"] if e.get("name") == "process_name"}
    assert pids == set(trace.pids)
    collapsed = cli("profile", str(path), "--format", "collapsed").stdout
    assert {line.split(";", 1)[0] for line in collapsed.splitlines()} == \
        {f"proc_fork_n {p}" for p in trace.pids}


# ---- crashes, and real programs ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_crash_is_reported_while_the_parent_goes_on(build, backend, tmp_path):
    crasher = build("crash")
    path = tmp_path / "sh.btrace"
    done = cli("run", "--backend", backend, "--last", "4", "-o", str(path), "--",
               "sh", "-c", f"{crasher}; echo after", timeout=300)
    assert done.returncode == 0, done.stderr      # sh's status, not the child's
    assert done.stdout == "after\n"
    trace = open_trace(path)
    child = [p for p in trace.processes if p.exit.status == "signaled"]
    assert len(child) == 1 and child[0].exit.signal == 11 and child[0].argv == (str(crasher),)
    assert f"branchtrace: {crasher} (pid {child[0].pid}) was killed by SIGSEGV" in done.stderr
    assert "step2+0x11 (crash) crash.c:8" in done.stderr   # symbolized with the child's maps
    report = cli("crash", str(path))
    assert report.returncode == 0
    assert report.stdout.startswith(f"branchtrace: {crasher} (pid {child[0].pid}) was "
                                    f"killed by SIGSEGV")


@pytest.mark.backend("ptrace")
def test_a_shell_and_the_programs_it_runs(tmp_path):
    """A real program: sh runs /bin/true, then /bin/echo (ptrace: ~30 s)."""
    path = tmp_path / "sh.btrace"
    native = subprocess.run(["sh", "-c", "/bin/true; /bin/echo hi"], capture_output=True)
    done = cli("run", "--backend", "ptrace", "--mode", "stream", "-o", str(path), "--",
               "sh", "-c", "/bin/true; /bin/echo hi", timeout=600)
    assert done.returncode == 0 and done.stdout == native.stdout.decode() == "hi\n"
    trace = open_trace(path)
    assert [(p.argv, p.exit.status, p.exit.code) for p in trace.processes] == [
        (("sh", "-c", "/bin/true; /bin/echo hi"), "exited", 0),
        (("/bin/true",), "exited", 0), (("/bin/echo", "hi"), "exited", 0)]
    sh = trace.processes[0].pid
    assert [p.ppid for p in trace.processes] == [0, sh, sh]
    assert trace.gaps == [] and not any(trace.lost.values())
    for p in trace.processes[1:]:
        view = trace.for_pid(p.pid)
        assert view.total() > 1000
        # its own maps: the exec'd program, not sh
        paths = {os.path.realpath(m.path) for m in view.modules}
        assert os.path.realpath(p.argv[0]) in paths
        assert os.path.realpath(shutil.which("sh") or "/bin/sh") not in paths


@pytest.mark.backend("ptrace")
def test_a_file_cut_short_keeps_the_processes_known_so_far(tmp_path):
    """branchtrace killed (SIGKILL) once the file names a child: the file reads, cut
    short, with the processes written so far, each with its own modules; the program
    finishes untraced."""
    import signal
    import sys
    import time

    from branchtrace.tracefile import scan

    path, out = tmp_path / "cut.btrace", tmp_path / "out.txt"
    with open(out, "wb") as sink:
        bt = subprocess.Popen([sys.executable, "-m", "branchtrace", "run", "--backend", "ptrace",
                               "--mode", "stream", "--buffer", "4096", "-o", str(path), "--",
                               "sh", "-c", "/bin/true; /bin/echo hi"],
                              stdout=sink, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and bt.poll() is None:
                if path.exists() and len(scan(path).processes) >= 2:
                    break
                time.sleep(0.2)
            assert bt.poll() is None, "the run ended before the file named a child"
            bt.send_signal(signal.SIGKILL)
            bt.wait()
        finally:
            if bt.poll() is None:
                bt.kill()
                bt.wait()
    deadline = time.monotonic() + 300          # the program goes on, untraced, to its end
    while time.monotonic() < deadline and out.read_bytes() != b"hi\n":
        time.sleep(0.2)
    assert out.read_bytes() == b"hi\n"
    trace = open_trace(path)
    assert trace.truncated and len(trace.processes) >= 2
    first, child = trace.processes[0], trace.processes[1]
    assert first.argv == ("sh", "-c", "/bin/true; /bin/echo hi") and first.ppid == 0
    assert child.ppid == first.pid and child.argv in {("/bin/true",), ("/bin/echo", "hi")}
    paths = {os.path.realpath(m.path) for m in trace.for_pid(child.pid).modules}
    assert os.path.realpath(child.argv[0]) in paths


@pytest.mark.backend("ptrace")
def test_ctrl_c_lets_every_traced_child_go_on(build, tmp_path):
    """Attached to a shell that then starts a program (a traced child, being stepped),
    Ctrl-C detaches both: neither is left stopped or traced, and both finish."""
    import signal
    import sys
    import time

    from procs import proc_status, wait_for_status

    sleeper = build("sleeper")
    fifo, out, said = tmp_path / "go", tmp_path / "finished", tmp_path / "said"
    os.mkfifo(fifo)
    with open(said, "wb") as sink:
        sh = subprocess.Popen(["sh", "-c", f"read x < {fifo}; {sleeper} {out} 20; echo done"],
                              stdout=sink)
    bt = subprocess.Popen([sys.executable, "-m", "branchtrace", "attach", "--backend", "ptrace",
                           "--report", "never", str(sh.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_status(sh.pid, lambda s: s["TracerPid"] != "0", "traced")
        with open(fifo, "w") as go:
            go.write("go\n")
        child = 0

        def traced_child(_: dict[str, str]) -> bool:
            nonlocal child
            for d in Path("/proc").iterdir():
                s = proc_status(int(d.name)) if d.name.isdigit() else {}
                if s.get("PPid") == str(sh.pid) and s.get("TracerPid", "0") != "0":
                    child = int(d.name)
                    return True
            return False

        wait_for_status(sh.pid, traced_child, "the parent of a traced child")
        bt.send_signal(signal.SIGINT)
        assert bt.wait(timeout=120) == 130, bt.stderr.read() if bt.stderr else ""
        for pid in (sh.pid, child):
            deadline = time.monotonic() + 60
            while (status := proc_status(pid)) and status["TracerPid"] != "0":
                assert time.monotonic() < deadline, f"pid {pid} still traced"
                time.sleep(0.01)
            # (the child may be gone already: it ran to its end)
            assert not status or status["State"][0] not in "tT", \
                f"pid {pid} left stopped: {status['State']}"
        assert sh.wait(timeout=300) == 0
        assert out.read_text().startswith("finished") and said.read_text() == "done\n"
    finally:
        for p in (bt, sh):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.backend("stalker")
def test_children_killed_by_a_signal_that_is_no_fault_have_that_exit(tmp_path):
    """SIGPIPE (``yes | head``), SIGTERM and SIGKILL reach no agent and no waitpid of
    ours: the kernel's exit events (backends/linux/exits.py) give them. A shell reports
    no SIGPIPE death, and neither does ``run``; the others get their report."""
    from branchtrace.backends.linux.exits import ExitWatcher

    watcher = ExitWatcher()
    available = watcher.available
    watcher.close()
    if not available:
        pytest.skip(f"no exit events here: {watcher.reason}")
    path = tmp_path / "sh.btrace"
    script = ("yes | head -1 >/dev/null; sh -c 'kill -TERM $$'; sh -c 'kill -KILL $$'; "
              "echo after")
    native = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    done = cli("run", "--backend", "stalker", "--last", "2", "-o", str(path), "--",
               "sh", "-c", script, timeout=300)
    assert done.returncode == native.returncode == 0, done.stderr
    assert done.stdout == native.stdout == "after\n"
    exits = {p.argv[0] if p.argv[0] != "sh" else p.argv[-1]: p.exit
             for p in open_trace(path).processes[1:]}
    assert exits["yes"].status == "signaled" and exits["yes"].signal == 13
    assert exits["head"].status == "exited" and exits["head"].code == 0
    assert exits["kill -TERM $$"].signal == 15 and exits["kill -KILL $$"].signal == 9
    assert "was killed by SIGTERM" in done.stderr and "was killed by SIGKILL" in done.stderr
    assert "SIGPIPE" not in done.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clone_child_process_is_followed_or_named(build, backend):
    """clone() without CLONE_VM makes a process: ptrace follows it; the stalker backend
    cannot (Frida's injector aborts on such a child, docs/stalker.md) and says so in the
    trace, never silently."""
    exe = build("proc_clone_process")
    native = subprocess.run([str(exe)], capture_output=True)
    trace, out = traced((str(exe),), backend=backend)
    assert out == native.stdout == b"child 45\nparent: child exit 3\n"
    assert trace.exit.status == "exited" and trace.exit.code == 0
    if backend == "ptrace":
        assert len(trace.processes) == 2 and trace.processes[1].exit.code == 3
        assert calls_to(trace.for_pid(trace.processes[1].pid), "work") == 1
        assert not any("not followed" in n for n in trace.notes)
    else:
        assert len(trace.processes) == 1
        notes = [n for n in trace.notes if "clone() without CLONE_VM" in n]
        assert len(notes) == 1 and "is not followed by the stalker backend" in notes[0]
