"""Snapshots on demand, without a program: the trigger's calls, the options, where the
files go, the store's copy of a running ring, and a snapshot made from a store and a
stand-in backend (snapshots.py, cli/_snapshots.py, reporters/snapshot.py)."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

from branchtrace.backends import SnapshotEvent, Target, Trigger
from branchtrace.cli._snapshots import trigger_of
from branchtrace.errors import UsageError
from branchtrace.model import BranchKind, ModuleMap
from branchtrace.reporters import snapshot as snapshot_report
from branchtrace.snapshots import SnapshotInfo, Snapshots, snapshot_path
from branchtrace.store import Encoding, Store, StoreConfig, StoreMode


def test_a_trigger_fires_at_the_nth_call_or_from_it_on():
    once = Trigger("f", 3)
    assert [n for n in range(1, 10) if once.fires(n)] == [3]
    assert not once.done(2) and once.done(3)
    every = Trigger("f", 2, every=True, limit=3)
    assert [n for n in range(1, 10) if every.fires(n)] == [2, 3, 4]
    assert not every.done(3) and every.done(4)


def _args(trigger=None, every=False, snapshots=None, mode="ring"):
    return argparse.Namespace(trigger=trigger, trigger_every=every, snapshots=snapshots,
                              mode=mode)


def test_trigger_options():
    assert trigger_of(_args()) is None
    assert trigger_of(_args("target")) == Trigger("target", 1, False, 1)
    assert trigger_of(_args("target:4")) == Trigger("target", 4, False, 1)
    assert trigger_of(_args("target:2", every=True)) == Trigger("target", 2, True, 16)
    assert trigger_of(_args("t", every=True, snapshots=3)) == Trigger("t", 1, True, 3)
    # C++ names keep their colons; only a last ":N" counts calls
    assert trigger_of(_args("ns::f")) == Trigger("ns::f", 1, False, 1)
    assert trigger_of(_args("ns::f:5")) == Trigger("ns::f", 5, False, 1)
    for bad, why in ((_args("f:0"), "count from 1"), (_args("a b"), "a function name"),
                     (_args(every=True), "go with --trigger"),
                     (_args("f", snapshots=2), "--snapshots goes with --trigger-every"),
                     (_args("f", mode="stream"), "ring mode")):
        with pytest.raises(UsageError, match=why):
            trigger_of(bad)


def test_snapshot_files_go_beside_the_runs_file():
    assert snapshot_path("/tmp/x/run.btrace", 2) == "/tmp/x/run.snapshot-2.btrace"
    assert snapshot_path("trace", 1) == "trace.snapshot-1.btrace"


def _ring(capacity: int = 8) -> Store:
    return Store.create(StoreConfig(StoreMode.RING, Encoding.FROMTO, capacity))


def test_peek_live_copies_a_ring_without_consuming_it():
    with _ring() as store:
        buffer = store.add_thread(100)
        for ip in range(1, 12):               # 11 records in a ring of 8
            buffer.push(ip * 16, ip * 16 + 5, BranchKind.JUMP)
        records, written = store.peek_live(100)
        assert written == 11
        # the oldest one may be being overwritten by a running producer: left out
        assert records["from_ip"].tolist() == [ip * 16 for ip in range(5, 12)]
        assert store.size(100) == 8           # nothing consumed
        assert len(store.drain(100)) == 8


class _Backend:
    """What a snapshot asks of a backend: its name, the modules and processes so far."""

    name = "ptrace"

    def live(self, first_id):
        return None, [ModuleMap("/bin/prog", 0x1000, 0x9000, 0)]

    def live_processes(self):
        return []


def test_a_snapshot_is_the_ring_at_that_moment_and_goes_to_deliver(tmp_path):
    got: list[tuple[object, SnapshotInfo]] = []
    snaps = Snapshots(lambda trace, info: got.append((trace, info)),
                      output=str(tmp_path / "run.btrace"))
    assert not snaps.request("SIGUSR2")       # no run yet: nothing happens
    with _ring(64) as store:
        buffer = store.add_thread(7)
        buffer.push(0x1010, 0x1020, BranchKind.CALL)
        config = StoreConfig(StoreMode.RING, Encoding.FROMTO, 64)
        snaps.bind(store, _Backend(), config, Target(argv=("prog",)), 0)
        snaps.take(SnapshotEvent("trigger f, call 1", 7, 7, 0x1020))
        buffer.push(0x1030, 0x1040, BranchKind.RETURN)   # after the snapshot
        assert snaps.request("SIGUSR2")
        snaps.close()
    assert snaps.errors == []
    (first, info1), (second, info2) = got
    assert info1 == SnapshotInfo(1, "trigger f, call 1", 7, str(tmp_path / "run.snapshot-1.btrace"))
    assert first.exit.status == "snapshot" and first.exit.fault_pc == 0x1020
    assert first.threads[7]["to_ip"].tolist() == [0x1020]      # the moment, not later
    assert second.threads[7]["to_ip"].tolist() == [0x1020, 0x1040] and info2.reason == "SIGUSR2"
    assert first.pid == 7 and first.notes == ["snapshot 1: trigger f, call 1"]

    import branchtrace
    from_file = branchtrace.open(tmp_path / "run.snapshot-1.btrace")
    assert from_file.exit.status == "snapshot" and from_file.threads[7]["to_ip"].tolist() == [0x1020]

    out = io.StringIO()
    snapshot_report.render(first, out, number=1, reason=info1.reason, file=info1.file, fmt="json")
    doc = json.loads(out.getvalue())
    assert doc["snapshot"]["reason"] == "trigger f, call 1"
    assert [t["thread"] for t in doc["threads"]] == [7]
    out = io.StringIO()
    snapshot_report.render(first, out, number=1, reason=info1.reason, file=info1.file)
    assert out.getvalue().startswith("branchtrace: snapshot 1 of prog (pid 7), thread 7: "
                                      "trigger f, call 1; it went on\n")
    assert "  stopped at:" in out.getvalue() and f"trace file: {info1.file}" in out.getvalue()
    assert np.array_equal(first.threads[7], from_file.threads[7])
