"""An attach that never answers (Frida 17.26's, ~1 in 2,300 back-to-back cycles under
load: its new agent loaded in the program, both ends of its connection waiting) is
given up and made again through a new Frida host (fridaattach.attach). Here the stuck attach
is a local device whose attach waits until it is cancelled, as the stuck one does: the
trace must come out whole and say what happened, later attaches to that pid must go to
the new host (the old one would wait on its stuck agent each time), and the program
must not notice. (A real stuck agent cannot be made on purpose; the soak loop in the
closing note of 2026-12-07 met 8 of them.)"""

from __future__ import annotations

import time
from typing import Any

import frida
import pytest

from branchtrace.backends import Target
from branchtrace.backends.stalker import fridaattach
from branchtrace.recorder import RecordConfig, record

from test_targets import counter_running

pytestmark = pytest.mark.backend("stalker")


class StuckHost:
    """A local device whose attach waits until it is cancelled."""

    def __init__(self) -> None:
        self.calls = 0

    def attach(self, pid: int, **options: Any) -> Any:
        self.calls += 1
        cancellable = frida.Cancellable.get_current()
        assert cancellable is not None, "attach() must run under a Cancellable"
        deadline = time.monotonic() + 30
        while not cancellable.is_cancelled:
            assert time.monotonic() < deadline, "never cancelled"
            time.sleep(0.01)
        raise frida.OperationCancelledError("operation was cancelled")


def test_a_stuck_attach_is_made_again_through_a_new_host(build, monkeypatch) -> None:
    exe = build("rel_counter")
    stuck = StuckHost()
    monkeypatch.setattr(fridaattach, "ATTACH_TIMEOUT", 1.0)
    monkeypatch.setattr(fridaattach, "_HOST_FOR_PID", {})
    monkeypatch.setattr(fridaattach, "STUCK_THREADS", {})
    monkeypatch.setattr(frida, "get_local_device", lambda: stuck)
    with counter_running(exe, at_least=3) as program:
        t0 = time.monotonic()
        trace = record(Target(pid=program.pid), RecordConfig(backend="stalker", duration=0.3))
        took = time.monotonic() - t0
        assert stuck.calls == 1
        assert trace.exit.status == "detached"
        assert any("did not answer in 1 s; attached again through a new Frida host" in n
                   for n in trace.notes), trace.notes
        assert not any("still leaving" in n for n in trace.notes), trace.notes
        assert list(trace.threads) == [program.pid] and len(trace.threads[program.pid]) > 0
        assert took < 10, took
        # what the stuck agent added (nothing, here) is kept for the next attaches
        assert fridaattach.STUCK_THREADS == {program.pid: frozenset()}
        # the next attach to this pid goes straight to the new host
        again = record(Target(pid=program.pid), RecordConfig(backend="stalker", duration=0.1))
        assert stuck.calls == 1
        assert again.exit.status == "detached"
        assert not any("attached again" in n for n in again.notes), again.notes
        assert program.poll() is None, "the program died"
