"""Stream mode loses nothing, checked against an independent counter.

With BRANCHTRACE_STALKER_CHECK=1 every block's code also counts the block in a 64-bit
word of its thread outside the store (backends/stalker/check.py); per thread, the
records the consumer drained must equal that counter exactly, over 100M+ blocks, with
a fast consumer and with one slowed on purpose (the program must wait for it).
The benchmarking variants (BRANCHTRACE_STALKER_VARIANT) are checked here too: they run
the program unchanged and record nothing."""

from __future__ import annotations

import os
import struct
import subprocess
import time

import numpy as np
import pytest
from conftest import cli

from branchtrace.backends import RecordOptions, Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.backends.stalker.check import ENV
from branchtrace.store import Encoding, Store, StoreConfig, StoreMode, StreamConsumer
from branchtrace.store.blocks import FLAG_ASYNC

# skipped with the reason when the stalker backend cannot run here; failed under
# --require-backend stalker (tests/conftest.py)
pytestmark = pytest.mark.backend("stalker")

#: loop.c runs ~4.5 blocks per iteration under Stalker: 23M iterations are ~100M blocks
ITERATIONS = 23_000_000
MIN_BLOCKS = 100_000_000


def fsgsbase() -> bool:
    """Does the kernel let programs use rdgsbase/wrgsbase (AT_HWCAP2 has
    HWCAP2_FSGSBASE)? Stream mode stores records through gs only then (gs.c)."""
    with open("/proc/self/auxv", "rb") as f:
        data = f.read()
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    pairs = dict(zip(words[::2], words[1::2]))
    return bool(pairs.get(26, 0) & 2)


def run_checked(argv: tuple[str, ...], config: StoreConfig, delay: float = 0.0):
    """Record ``argv`` in stream mode; per thread: records drained, the independent
    counter, and the store's status."""
    drained: dict[int, int] = {}
    last: dict[int, int] = {}
    backend = StalkerBackend()

    def sink(tid: int, records: np.ndarray) -> None:
        if delay:
            time.sleep(delay)       # slower than the program: it must wait for chunks
        drained[tid] = drained.get(tid, 0) + len(records)
        last[tid] = int(records[-1])

    with Store.create(config) as store:
        consumer = StreamConsumer(store, sink).start()
        try:
            result = backend.record(Target(argv=argv), store, RecordOptions())
        finally:
            consumer.stop()
        status = {t.tid: t for t in store.status().threads}
    assert result.exit.status == "exited" and result.exit.code == 0, result.exit
    assert backend.check_counts is not None, "the check counter was not read back"
    return result, drained, backend.check_counts, status


def assert_exact(result, drained, counted, status) -> None:
    assert result.gaps == []
    assert set(counted) == set(result.threads) == set(drained)
    for tid in result.threads:
        assert drained[tid] == counted[tid], f"thread {tid}: drained {drained[tid]}, " \
                                             f"counted {counted[tid]}"
        assert status[tid].written == drained[tid]
        assert status[tid].lost == 0


def test_stream_drains_exactly_what_the_blocks_counted(build, monkeypatch, soak):
    monkeypatch.setenv(ENV, "1")
    n = ITERATIONS * (10 if soak else 1)
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 4 * 65536, 65536)
    t0 = time.monotonic()
    result, drained, counted, status = run_checked((str(build("loop")), str(n)), config)
    elapsed = time.monotonic() - t0
    assert_exact(result, drained, counted, status)
    assert counted[result.pid] >= MIN_BLOCKS * (10 if soak else 1)
    print(f"\nblocks counted {counted[result.pid]:,}, drained {drained[result.pid]:,}, "
          f"producer waits {status[result.pid].producer_waits}, {elapsed:.1f} s")


def test_stream_with_a_slow_consumer_and_small_buffers_is_exact(build, monkeypatch, soak):
    monkeypatch.setenv(ENV, "1")
    n = ITERATIONS * (5 if soak else 1)
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 2 * 65536, 65536)  # 2 chunks
    t0 = time.monotonic()
    result, drained, counted, status = run_checked((str(build("loop")), str(n)), config,
                                                   delay=0.002)
    elapsed = time.monotonic() - t0
    assert_exact(result, drained, counted, status)
    assert counted[result.pid] >= MIN_BLOCKS * (5 if soak else 1)
    waits = status[result.pid].producer_waits
    assert waits > 0, "the program never waited for the slow consumer"
    print(f"\nblocks counted {counted[result.pid]:,}, drained {drained[result.pid]:,}, "
          f"producer waits {waits}, {elapsed:.1f} s")


def test_every_thread_is_counted_apart(build, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 2 * 1024, 1024)
    result, drained, counted, status = run_checked((str(build("threads")),), config)
    assert len(result.threads) == 5
    assert_exact(result, drained, counted, status)
    assert len(set(counted.values())) == 5    # the threads did different amounts of work


def test_threads_storing_through_gs_are_counted_apart(build, monkeypatch):
    # chunks of 65536 records: each thread's block-start code stores through gs
    # (thread.c, "gs"); a new thread inherits its maker's gs base and takes its own
    monkeypatch.setenv(ENV, "1")
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 4 * 65536, 65536)
    result, drained, counted, status = run_checked((str(build("threads")),), config)
    assert len(result.threads) == 5
    assert_exact(result, drained, counted, status)
    assert len(set(counted.values())) == 5


def test_a_program_that_takes_gs_for_itself_gets_it_and_nothing_is_lost(build, monkeypatch,
                                                                        tmp_path):
    """rel_gsbase sets its gs base (arch_prctl) halfway and reads through it, also in a
    thread made afterwards. Its records went through gs until then: the program must get
    its gs (same output as natively), and every block is recorded before and after."""
    exe = str(build("rel_gsbase"))
    native = subprocess.run([exe, "300000"], capture_output=True, text=True, check=True)
    monkeypatch.setenv(ENV, "1")
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 4 * 65536, 65536)
    result, drained, counted, status = run_checked((exe, "300000"), config)
    assert_exact(result, drained, counted, status)
    assert counted[result.pid] > 2 * 600_000        # both loops: before and after
    if fsgsbase():   # else stream mode never uses gs here (gs.c), and there is no note
        assert any("own gs base" in note for note in result.notes), result.notes
    out = tmp_path / "gs.btrace"
    traced = cli("run", "--backend", "stalker", "--mode", "stream", "--report", "never",
                 "-o", str(out), "--", exe, "300000")
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == native.stdout
    stats = cli("stats", str(out))
    assert stats.returncode == 0, stats.stderr
    if not fsgsbase():
        pytest.skip("the kernel does not let programs use wrgsbase (AT_HWCAP2): stream mode "
                    "keeps its cursor here, so the program's gs was never in its way")
    assert "own gs base" in stats.stdout, stats.stdout


def test_attached_in_stream_mode_through_gs_every_block_is_recorded(build, monkeypatch):
    """Attached to a running loop, in stream mode through gs: Stalker makes the thread's
    first block on the agent's thread, where the loop's gs cannot be set (gs.c: its
    first block points gs on the thread itself). The program ends while attached: the
    records equal the independent block counter."""
    monkeypatch.setenv(ENV, "1")
    program = subprocess.Popen([str(build("loop")), "400000000"])
    try:
        time.sleep(0.2)                     # running natively (~1 s of work in all)
        drained: dict[int, int] = {}
        backend = StalkerBackend()
        config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 4 * 65536, 65536)
        with Store.create(config) as store:
            consumer = StreamConsumer(
                store, lambda tid, r: drained.__setitem__(tid, drained.get(tid, 0) + len(r)))
            consumer.start()
            try:
                result = backend.record(Target(pid=program.pid), store, RecordOptions())
            finally:
                consumer.stop()
        assert program.wait(timeout=60) == 0
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    assert result.exit.status == "exited" and result.exit.code == 0, result.exit
    assert backend.check_counts is not None and backend.check_counts[program.pid] > 10**7
    assert drained == backend.check_counts


def test_no_counter_without_the_switch(build, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 2 * 1024, 1024)
    backend = StalkerBackend()
    with Store.create(config) as store, StreamConsumer(store, lambda tid, r: None):
        result = backend.record(Target(argv=(str(build("loop")), "100")), store,
                                RecordOptions())
    assert result.exit.code == 0 and backend.check_counts is None


@pytest.mark.parametrize("variant", ["follow", "stock"])
def test_benchmark_variants_run_the_program_and_record_nothing(build, monkeypatch, variant):
    monkeypatch.setenv("BRANCHTRACE_STALKER_VARIANT", variant)
    config = StoreConfig(StoreMode.RING, Encoding.BLOCKID, 1024)
    with Store.create(config) as store:
        result = StalkerBackend().record(Target(argv=(str(build("threads")),)), store,
                                         RecordOptions())
        status = store.status()
    assert result.exit.status == "exited" and result.exit.code == 0
    assert len(result.threads) == 5                      # every thread was followed
    assert all(t.written == 0 for t in status.threads)
    assert any(variant in note for note in result.notes)


def test_an_unknown_variant_is_a_usage_error(build):
    env = dict(os.environ, BRANCHTRACE_STALKER_VARIANT="fast")
    result = cli("run", "--backend", "stalker", "--", str(build("loop")), "10", env=env)
    assert result.returncode == 125                 # run's own failure, not the program's
    assert result.stderr.count("\n") == 1 and "BRANCHTRACE_STALKER_VARIANT" in result.stderr


def test_timer_signals_while_waiting_for_the_consumer_are_all_recorded(build):
    """SIGALRM every millisecond while the program waits for a slow consumer (50 ms per
    chunk of 1024 records): the handler runs natively then, and leaves its records for
    the next block; a delivery at the same place as the one before is counted, not
    dropped (32 pending ids would hold only 16). Every run of the handler is there."""
    config = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 2 * 1024, 1024)
    backend = StalkerBackend()
    parts: list[np.ndarray] = []

    def sink(tid: int, records: np.ndarray) -> None:
        time.sleep(0.05)
        parts.append(records.copy())

    out = build.root / "alarm.out"
    with Store.create(config) as store, open(out, "wb") as f:
        consumer = StreamConsumer(store, sink).start()
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            result = backend.record(Target(argv=(str(build("rel_alarm")), "100")), store,
                                    RecordOptions())
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            consumer.stop()
        waits = store.status().threads[0].producer_waits
    ticks = int(out.read_bytes().split()[1])
    assert result.exit.status == "exited" and ticks >= 100
    assert waits >= 2, "the program did not wait for the consumer"
    ids = np.concatenate(parts).astype(np.int64)
    handler_runs = int(((result.blocks["flags"][ids] & FLAG_ASYNC) != 0).sum())
    assert handler_runs == ticks
