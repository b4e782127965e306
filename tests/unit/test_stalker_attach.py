"""Frida's attach, bounded (backends/stalker/fridaattach.py, ``attach``): one that never
answers is cancelled and tried again on a device of a new Frida host (the old host
would only wait on its stuck agent again); one that never answers twice is a clear
error, not a hang."""

from __future__ import annotations

import threading
import time
from typing import Any

import frida
import pytest

from branchtrace.backends.stalker import fridaattach
from branchtrace.backends.stalker.fridaattach import attach
from branchtrace.errors import TargetError


class StuckDevice:
    """Its first ``stuck`` attaches wait until they are cancelled, as Frida's does."""

    def __init__(self, stuck: int) -> None:
        self.stuck = stuck
        self.calls = 0
        self.options: dict[str, Any] = {}

    def attach(self, pid: int, **options: Any) -> str:
        self.calls += 1
        self.options = options
        if self.calls > self.stuck:
            return f"session {pid}"
        cancellable = frida.Cancellable.get_current()
        assert cancellable is not None, "attach() must run under a Cancellable"
        deadline = time.monotonic() + 10
        while not cancellable.is_cancelled:
            assert time.monotonic() < deadline, "never cancelled"
            time.sleep(0.005)
        raise frida.OperationCancelledError("operation was cancelled")


@pytest.fixture(autouse=True)
def no_hosts_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fridaattach, "_HOST_FOR_PID", {})


def test_an_attach_that_answers_is_not_delayed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fridaattach, "fresh_local_device", lambda: pytest.fail("no retry"))
    device = StuckDevice(0)
    t0 = time.monotonic()
    assert attach(device, 42, timeout=5) == (device, "session 42")
    assert time.monotonic() - t0 < 1 and device.calls == 1
    # without Frida's exit monitor (fridaattach.SESSION_OPTIONS): its hooks on exit,
    # _exit and abort left children forked before our fork hook stuck
    assert device.options == {"exit_monitor": False}


def test_a_stuck_attach_is_cancelled_and_tried_again_on_a_new_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stuck, fresh = StuckDevice(100), StuckDevice(0)
    monkeypatch.setattr(fridaattach, "fresh_local_device", lambda: fresh)
    t0 = time.monotonic()
    assert attach(stuck, 42, timeout=0.2) == (fresh, "session 42")
    assert stuck.calls == 1 and fresh.calls == 1
    assert 0.2 <= time.monotonic() - t0 < 5
    # the old host would wait on its stuck agent again: this pid goes to the new one
    assert attach(stuck, 42, timeout=0.2) == (fresh, "session 42")
    assert stuck.calls == 1 and fresh.calls == 2
    assert fridaattach._HOST_FOR_PID == {42: fresh}   # other pids still go to the old one


def test_the_retry_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[int] = []
    monkeypatch.setattr(fridaattach, "fresh_local_device", lambda: StuckDevice(0))
    attach(StuckDevice(0), 42, timeout=5, on_retry=lambda: told.append(1))
    assert told == []
    attach(StuckDevice(1), 44, timeout=0.1, on_retry=lambda: told.append(2))
    assert told == [2]


def test_stuck_every_time_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [StuckDevice(5) for _ in range(2)]
    made = iter(devices[1:])
    monkeypatch.setattr(fridaattach, "fresh_local_device", lambda: next(made))
    # pytest-timeout's own Timer runs during every test: only ours must be gone
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    with pytest.raises(TargetError, match=r"cannot trace pid 42: Frida's attach did not "
                                          r"finish in 0.1 s, 2 times"):
        attach(devices[0], 42, timeout=0.1)
    assert [d.calls for d in devices] == [1, 1]
    assert not [t for t in threading.enumerate()
                if isinstance(t, threading.Timer) and t not in before]


def test_a_new_host_is_a_working_local_device() -> None:
    """What the retry attaches with: a local device of a manager of its own."""
    device = fridaattach.fresh_local_device()
    assert device.type == "local"
    assert device.enumerate_processes(pids=[__import__("os").getpid()])
