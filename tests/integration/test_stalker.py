"""The Stalker backend, for real: crash reports, exact counts, threads, a lossless stream
with a slow consumer, byte-identical output, --only, and attach/detach."""

from __future__ import annotations

import hashlib
import os
import shutil
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, marker_line
from procs import wait_for_status

from branchtrace.backends import RecordOptions, Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.decode import decode
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from branchtrace.store import Encoding, Store, StoreConfig, StoreMode, StreamConsumer
from branchtrace.symbols import Symbolizer

# skipped with the reason when the stalker backend cannot run here; failed under
# --require-backend stalker (tests/conftest.py)
pytestmark = pytest.mark.backend("stalker")


def kinds_inside(branches: np.ndarray, sym: Symbolizer, function: str) -> Counter[str]:
    found = sym.resolve(branches["from_ip"])
    names = np.array(found.function_names + ("",))[found.function]
    return Counter(BranchKind(int(k)).label for k in branches["kind"][names == function])


def expected_work(n: int) -> Counter[str]:
    return Counter({"cond": (n + 1) // 2, "jump": n // 2, "return": n})


def test_crash_report_names_the_calls(build, tmp_path):
    exe = build("crash")
    report = tmp_path / "report.json"
    result = cli("run", "--backend", "stalker", "--last", "8", "--format", "json",
                 "--report-to", str(report), "--", str(exe))
    assert result.returncode == 128 + 11, result.stderr
    doc = json.loads(report.read_text())
    assert doc["exit"]["status"] == "signaled"
    assert doc["exit"]["signal"]["name"] == "SIGSEGV"
    assert doc["exit"]["fault_address"] == 0
    # under Stalker the pc is in Stalker's code: the agent maps it back to the program
    assert doc["exit"]["fault_pc"]["function"] == "step2"
    assert doc["exit"]["fault_pc"]["line"] == marker_line("crash.c", "CRASH_LINE")
    calls = [(b["from"]["function"], b["to"]["function"], b["from"]["line"], b["to"]["offset"])
             for b in doc["branches"] if b["kind"] == "call"]
    assert calls[-2:] == [
        ("main", "step1", marker_line("crash.c", "CALL_STEP1"), 0),
        ("step1", "step2", marker_line("crash.c", "CALL_STEP2"), 0),
    ]
    assert all(b["thread"] == doc["pid"] for b in doc["branches"])


@pytest.mark.parametrize("mode", ["ring", "stream"])
@pytest.mark.parametrize("n", [1000, 333])
def test_loop_counts_are_exact(build, mode, n):
    exe = build("loop")
    trace = record(Target(argv=(str(exe), str(n))), RecordConfig(backend="stalker", mode=mode))
    assert trace.backend == "stalker"
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert list(trace.threads) == [trace.pid]
    b = trace.branches(trace.pid)
    assert kinds_inside(b, trace.symbolizer, "work") == expected_work(n)
    assert trace.lost == {trace.pid: 0} and trace.gaps == []
    # every call into work comes from main
    to = trace.symbolizer.resolve(b["to_ip"])
    to_names = np.array(to.function_names + ("",))[to.function]
    assert int(((b["kind"] == BranchKind.CALL) & (to_names == "work")).sum()) == n


def _exe_window(trace, exe):
    """The trace's branches whose source and target are both in ``exe``, as
    (from offset, to offset, kind) rows: comparable across runs (ASLR)."""
    b = trace.branches(trace.pid)
    module = next(m for m in trace.modules if Path(m.path).resolve() == Path(exe).resolve())
    inside = ((b["from_ip"] >= module.start) & (b["from_ip"] < module.end)
              & (b["to_ip"] >= module.start) & (b["to_ip"] < module.end))
    b = b[inside]
    return np.stack([b["from_ip"] - module.start, b["to_ip"] - module.start,
                     b["kind"].astype(np.uint64)], axis=1)


def test_returns_to_many_sites_are_all_recorded(build, monkeypatch):
    """The return cache (docs/stalker.md, "Returns") sends returns straight to their
    block's code: every return must still be recorded, to the right place, with the
    same trace as with Stalker's own handling of returns."""
    exe = build("conf_returns")
    n = 20000
    trace = record(Target(argv=(str(exe), str(n))), RecordConfig(backend="stalker", mode="stream"))
    assert trace.exit.code == 0 and trace.lost == {trace.pid: 0}
    b = trace.branches(trace.pid)
    sym = trace.symbolizer
    src = sym.resolve(b["from_ip"])
    names = np.array(src.function_names + ("",))[src.function]
    returns = b["kind"] == BranchKind.RETURN
    step_targets = Counter(int(t) for t in b["to_ip"][returns & (names == "step")])
    assert sorted(step_targets.values()) == [n, n, n]      # three sites, n returns each
    inner = Counter(int(t) for t in b["to_ip"][returns & (names == "pop_arg_inner")])
    assert list(inner.values()) == [n]                     # `ret $8`, always to pop_arg
    assert sym.describe(next(iter(inner))).function == "pop_arg"
    with_cache = _exe_window(trace, exe)
    monkeypatch.setenv("BRANCHTRACE_STALKER_RETCACHE", "0")
    without = record(Target(argv=(str(exe), str(n))), RecordConfig(backend="stalker", mode="stream"))
    assert without.exit.code == 0
    assert np.array_equal(with_cache, _exe_window(without, exe))


@pytest.mark.parametrize("mode", ["stream", "ring"])
def test_trust_threshold_zero_keeps_the_out_of_line_paths_in_the_block(tmp_path, mode):
    """The pend and slow paths of a block's start code come after the block (emit.c,
    emit_stub), which is safe only while Stalker keeps a snapshot of each block's code
    after it. With a trust threshold of 0 (BRANCHTRACE_STALKER_TRUST=0, for measuring)
    it keeps none: the next block's code is adjacent, and backpatching fills the rest of a
    block with NOPs, the stub included; a pend (a cache miss takes one) then slid into
    the next block. bash died of SIGSEGV every time (and `python3 -c pass`). The agent
    keeps those paths inline then: bash must run as natively."""
    bash = shutil.which("bash")
    assert bash is not None
    script = "for i in 1 2 3; do echo $i; done; x=$(echo sub); echo $x"
    out = tmp_path / "t.btrace"
    env = dict(os.environ, BRANCHTRACE_STALKER_TRUST="0")
    r = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never", "-o", str(out),
            "--", bash, "-c", script, env=env)
    assert (r.returncode, r.stdout) == (0, "1\n2\n3\nsub\n"), r.stderr[-2000:]
    stats = cli("stats", str(out))
    assert stats.returncode == 0 and "exited with status 0" in stats.stdout
    if mode == "stream":
        assert "lost:      0" in stats.stdout


def test_threads_each_record_their_own_work(build):
    exe = build("threads")
    trace = record(Target(argv=(str(exe),)), RecordConfig(backend="stalker", mode="stream"))
    assert trace.exit.code == 0
    assert len(trace.threads) == 5 and next(iter(trace.threads)) == trace.pid
    workers = [tid for tid in trace.threads if tid != trace.pid]
    got = sorted(kinds_inside(trace.branches(t), trace.symbolizer, "work")["return"]
                 for t in workers)
    assert got == [50, 100, 150, 200]
    for tid in workers:
        counts = kinds_inside(trace.branches(tid), trace.symbolizer, "work")
        assert counts == expected_work(counts["return"])
    assert kinds_inside(trace.branches(trace.pid), trace.symbolizer, "work") == Counter()


@pytest.mark.parametrize("mode,retcache", [("stream", "1"), ("ring", "1"), ("ring", "0")])
def test_clone_threads_are_followed(build, monkeypatch, mode, retcache):
    """Threads made with glibc's clone(), not pthread_create, share the parent's thread
    pointer; the agent follows them from clone's return (docs/stalker.md, "Threads made
    with clone()"): child k's calls of work() are exact, the program ends normally, and
    none of the gate's waiting or of libc appears in a child's trace."""
    monkeypatch.setenv("BRANCHTRACE_STALKER_RETCACHE", retcache)
    exe = build("rel_clone")
    for _ in range(3):
        trace = record(Target(argv=(str(exe),)), RecordConfig(backend="stalker", mode=mode))
        assert trace.exit.status == "exited" and trace.exit.code == 0
        assert len(trace.threads) == 3 and next(iter(trace.threads)) == trace.pid
        assert mode == "ring" or set(trace.lost.values()) == {0}
        children = [tid for tid in trace.threads if tid != trace.pid]
        got = sorted(kinds_inside(trace.branches(t), trace.symbolizer, "work")["return"]
                     for t in children)
        assert got == [40, 80]
        for tid in children:
            counts = kinds_inside(trace.branches(tid), trace.symbolizer, "work")
            assert counts == expected_work(counts["return"])
            assert kinds_inside(trace.branches(tid), trace.symbolizer, "child")["call"] == \
                counts["return"]
            found = trace.symbolizer.resolve(trace.branches(tid)["from_ip"])
            names = set(np.array(found.function_names + ("",))[found.function].tolist())
            assert names <= {"child", "work", "clone"}
        assert kinds_inside(trace.branches(trace.pid), trace.symbolizer, "work") == Counter()
        assert kinds_inside(trace.branches(trace.pid), trace.symbolizer, "main")["call"] >= 2


def test_stream_with_a_slow_consumer_loses_nothing(build):
    exe = build("loop")
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 2048, 1024)  # 2 chunks of 1024
    drained: list[np.ndarray] = []

    def slow_sink(tid: int, records: np.ndarray) -> None:
        time.sleep(0.0005)      # slower than the program: it must wait for free chunks
        drained.append(records)

    with Store.create(config) as store:
        consumer = StreamConsumer(store, slow_sink).start()
        result = StalkerBackend().record(Target(argv=(str(exe), "20000")), store,
                                         RecordOptions())
        consumer.stop()
        status = store.status()
    assert result.exit.code == 0
    (thread,) = status.threads
    ids = np.concatenate(drained)
    assert thread.written == len(ids) == consumer.total > 20000 * 4
    assert thread.lost == 0 and thread.producer_waits > 0
    branches = decode(Encoding.BLOCKID, ids, result.blocks)
    assert kinds_inside(branches, Symbolizer(result.modules), "work") == expected_work(20000)


def test_ring_keeps_the_newest_records(build):
    exe = build("loop")
    target = Target(argv=(str(exe), "200"), disable_aslr=True)
    full = record(target, RecordConfig(backend="stalker", mode="stream"))
    ring = record(target, RecordConfig(backend="stalker", mode="ring", buffer="500"))
    assert ring.lost[ring.pid] == ring.written[ring.pid] - 500
    kept, everything = ring.branches(ring.pid), full.branches(full.pid)
    assert 100 < len(kept) < 500
    # same program, same addresses: the ring's branches are the end of the full sequence
    assert np.array_equal(kept, everything[-len(kept):])


def _same_output(argv: list[str], mode: str = "ring") -> None:
    native = subprocess.run(argv, capture_output=True, check=True, timeout=120)
    traced = subprocess.run([sys.executable, "-m", "branchtrace", "run", "--backend", "stalker",
                             "--mode", mode, "--", *argv], capture_output=True,
                            timeout=300, check=False)
    assert traced.returncode == 0, traced.stderr
    assert hashlib.sha256(traced.stdout).hexdigest() == hashlib.sha256(native.stdout).hexdigest()
    assert len(native.stdout) > 0


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "data"
    rng = np.random.default_rng(3)
    data.write_bytes(rng.integers(0, 16, 1 << 20, dtype=np.uint8).tobytes())  # compressible
    return data


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_output_is_byte_identical(data_file, mode):
    _same_output(["gzip", "-9", "-c", str(data_file)], mode)


def test_xz_output_is_byte_identical(data_file):
    _same_output(["xz", "-6", "-c", str(data_file)])


def test_python_output_is_byte_identical():
    python = os.path.realpath(sys.executable)
    _same_output([python, "-S", "-c", "import hashlib\ns=0\nfor i in range(200000): s+=i*i%7\n"
                  "print(s, hashlib.sha256(str(s).encode()).hexdigest())"])


def test_sqlite_output_is_byte_identical():
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 program is not installed")
    _same_output(["sqlite3", ":memory:", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 "
                  "FROM c WHERE x<200000) SELECT sum(x*x % 7), count(*) FROM c;"])


def test_threaded_output_is_byte_identical(build):
    _same_output([str(build("threads"))], "stream")


def test_only_traces_the_named_module(build):
    exe = build("loop")
    config = StoreConfig(StoreMode.RING, Encoding.BLOCKID, 1 << 16)
    with Store.create(config) as store:
        result = StalkerBackend(only=(exe.name,)).record(Target(argv=(str(exe), "300")), store,
                                                         RecordOptions())
        ids = store.drain(result.pid)
    branches = decode(Encoding.BLOCKID, ids, result.blocks)
    sym = Symbolizer(result.modules)
    assert kinds_inside(branches, sym, "work") == expected_work(300)
    module = next(m for m in result.modules if m.path == str(exe))

    def inside(a: np.ndarray) -> np.ndarray:
        return (a >= module.start) & (a < module.end)

    # every branch leaves from or lands in the program itself: none inside libc
    assert (inside(branches["from_ip"]) | inside(branches["to_ip"])).all()


def test_attach_then_detach_leaves_the_program_running(build, tmp_path):
    exe = build("sleeper")
    out = tmp_path / "out"
    program = subprocess.Popen([str(exe), str(out), "30"])
    try:
        # in main's loop (asleep in its nanosleep), not still in the dynamic loader
        wait_for_status(program.pid, lambda st: st["Name"] == exe.name
                        and st["State"].startswith("S"), "asleep in main's loop")
        trace = record(Target(pid=program.pid),
                       RecordConfig(backend="stalker", mode="stream", duration=0.5))
        assert trace.exit.status == "detached" and trace.pid == program.pid
        assert list(trace.threads) == [program.pid]
        # what it recorded is the program's loop: it woke from a nanosleep back into main
        # (a round is 50 ms), and went round main's inner loop (100 taken branches a round)
        b = trace.branches(program.pid)
        src, dst = trace.symbolizer.resolve(b["from_ip"]), trace.symbolizer.resolve(b["to_ip"])
        src_names = np.array(src.function_names + ("",))[src.function]
        dst_names = np.array(dst.function_names + ("",))[dst.function]
        assert ((b["kind"] == BranchKind.RETURN) & (dst_names == "main")).any()
        assert int(((src_names == "main") & (dst_names == "main")
                    & (b["kind"] == BranchKind.COND)).sum()) >= 99
        assert program.wait(timeout=60) == 0
    finally:
        if program.poll() is None:
            program.kill()
    assert Path(out).read_text().startswith("finished")
