"""Two branchtrace runs at the same time never share or clobber a store or a trace file.

The programs meet: each makes its "running" file, then waits for the test's "go" file,
so both recordings are provably live at once while the test looks at which store each
branchtrace process has mapped. Then each calls work() its own number of times.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_BACKENDS

import branchtrace
from branchtrace.errors import UsageError
from branchtrace.model import BranchKind
from branchtrace.tracefile import TraceWriter
from branchtrace.tracefile.format import FileHeader


MEET = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
volatile long sink;
__attribute__((noinline)) long work(long i)
{
    if (i & 1)
        sink += i;
    else
        sink -= i;
    return sink;
}
int main(int argc, char **argv)     /* N RUNNING-FILE GO-FILE */
{
    long n = atol(argv[1]);
    close(open(argv[2], O_CREAT | O_WRONLY, 0600));
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (int t = 0; t < 6000 && access(argv[3], F_OK) != 0; t++)
        nanosleep(&ts, NULL);
    for (long i = 0; i < n; i++)
        work(i);
    return 0;
}
"""
def kinds_inside(trace: branchtrace.Trace, tid: int, function: str) -> Counter[str]:
    """Branch kinds whose source instruction lies in ``function``."""
    branches = trace.branches(tid)
    found = trace.symbolizer.resolve(branches["from_ip"])
    names = np.array(found.function_names + ("",))[found.function]
    return Counter(BranchKind(int(k)).label for k in branches["kind"][names == function])


def expected_work(n: int) -> Counter[str]:
    """work(i) at -O0: the je is taken for even i, the jmp for odd i, one ret each."""
    return Counter({"cond": (n + 1) // 2, "jump": n // 2, "return": n})


STORE = re.compile(r"\S*/branchtrace-[^/\s]+/btstore-[0-9a-f]+\.bts")


@pytest.fixture(scope="module")
def meet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the program under different names (each trace names its own)."""
    root = tmp_path_factory.mktemp("meet")
    (root / "meet.c").write_text(MEET)
    subprocess.run(["gcc", "-g", "-O0", "-o", str(root / "meet_a"), str(root / "meet.c")],
                   check=True)
    (root / "meet_b").write_bytes((root / "meet_a").read_bytes())
    (root / "meet_b").chmod(0o755)
    return root / "meet_a", root / "meet_b"


def start(backend: str, out: Path, exe: Path, n: int, running: Path, go: Path,
          ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "branchtrace", "run", "--backend", backend, "--mode", "stream",
         "-o", str(out), "--", str(exe), str(n), str(running), str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(paths: list[Path], runs: list[subprocess.Popen[str]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for run in runs:
            assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the programs never started"
        time.sleep(0.02)


def mapped_stores(pid: int) -> set[str]:
    return set(STORE.findall(Path(f"/proc/{pid}/maps").read_text()))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_two_runs_at_once_keep_their_own_store_and_file(backend, meet, tmp_path):
    n = {"a": 300, "b": 500} if backend == "ptrace" else {"a": 30000, "b": 50000}
    go = tmp_path / "go"
    running = {k: tmp_path / f"running_{k}" for k in n}
    out = {k: tmp_path / f"{k}.btrace" for k in n}
    exe = dict(zip(n, meet))
    runs = {k: start(backend, out[k], exe[k], n[k], running[k], go) for k in n}
    try:
        wait_for(list(running.values()), list(runs.values()))
        # both are recording now: each branchtrace has a store of its own mapped
        stores = {k: mapped_stores(runs[k].pid) for k in n}
        assert len(stores["a"]) == 1 and len(stores["b"]) == 1, stores
        (a,), (b,) = stores["a"], stores["b"]
        assert a != b and Path(a).parent != Path(b).parent
        go.touch()
        results = {k: runs[k].communicate(timeout=120) for k in n}
    finally:
        go.touch()
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    for k in n:
        assert runs[k].returncode == 0, results[k]
        assert results[k][1] == ""
    traces = {k: branchtrace.open(out[k]) for k in n}
    assert traces["a"].pid != traces["b"].pid
    for k, trace in traces.items():
        assert not trace.truncated and trace.exit.status == "exited" and trace.exit.code == 0
        assert trace.argv == (str(exe[k]), str(n[k]), str(running[k]), str(go))
        assert trace.backend == backend and list(trace.threads) == [trace.pid]
        assert any(m.path == str(exe[k]) for m in trace.modules)
        assert not any(m.path == str(exe["b" if k == "a" else "a"]) for m in trace.modules)
        assert trace.gaps == [] and trace.lost == {trace.pid: 0}
        assert kinds_inside(trace, trace.pid, "work") == expected_work(n[k])
    # both stores are gone once their runs are over
    assert not Path(a).exists() and not Path(b).exists()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_the_same_output_path_twice_at_once(backend, meet, tmp_path):
    """The second run fails at once, in one line, before its program starts; the first
    writes its file undisturbed. (The file is locked with flock while it is written.)"""
    go = tmp_path / "go"
    out = tmp_path / "same.btrace"
    first = start(backend, out, meet[0], 200, tmp_path / "running_1", go)
    try:
        wait_for([tmp_path / "running_1"], [first])
        second = start(backend, out, meet[1], 200, tmp_path / "running_2", go)
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0 and "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "another branchtrace is writing it" in lines[0], err
        assert not (tmp_path / "running_2").exists(), "the second program ran"
        go.touch()
        _, err = first.communicate(timeout=120)
    finally:
        go.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    trace = branchtrace.open(out)
    assert not trace.truncated and trace.argv[0] == str(meet[0])
    assert kinds_inside(trace, trace.pid, "work") == expected_work(200)


def test_writers_in_one_process_exclude_each_other(tmp_path):
    header = FileHeader(1, 1, 24, 16, 0, 0, 0, "ptrace", "test", ("prog",))
    out = tmp_path / "t.btrace"
    first = TraceWriter.create(out, header)
    with pytest.raises(UsageError, match="another branchtrace is writing it"):
        TraceWriter.create(out, header)
    first.close()
    TraceWriter.create(out, header).close()    # once it is closed, the path is free
