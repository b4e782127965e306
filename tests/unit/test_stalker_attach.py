"""Frida's attach, bounded (backends/stalker/launch.py, ``attach``): one that never
answers is cancelled and tried again; one that never answers twice is a clear error,
not a hang."""

from __future__ import annotations

import threading
import time

import frida
import pytest

from branchtrace.backends.stalker.launch import attach
from branchtrace.errors import TargetError


class StuckDevice:
    """Its first ``stuck`` attaches wait until they are cancelled, as Frida's does."""

    def __init__(self, stuck: int) -> None:
        self.stuck = stuck
        self.calls = 0

    def attach(self, pid: int) -> str:
        self.calls += 1
        if self.calls > self.stuck:
            return f"session {pid}"
        cancellable = frida.Cancellable.get_current()
        assert cancellable is not None, "attach() must run under a Cancellable"
        deadline = time.monotonic() + 10
        while not cancellable.is_cancelled:
            assert time.monotonic() < deadline, "never cancelled"
            time.sleep(0.005)
        raise frida.OperationCancelledError("operation was cancelled")


def test_an_attach_that_answers_is_not_delayed() -> None:
    device = StuckDevice(0)
    t0 = time.monotonic()
    assert attach(device, 42, timeout=5) == "session 42"
    assert time.monotonic() - t0 < 1 and device.calls == 1


def test_a_stuck_attach_is_cancelled_and_tried_again() -> None:
    device = StuckDevice(1)
    t0 = time.monotonic()
    assert attach(device, 42, timeout=0.2) == "session 42"
    assert device.calls == 2 and 0.2 <= time.monotonic() - t0 < 5


def test_stuck_every_time_is_a_clear_error() -> None:
    device = StuckDevice(5)
    # pytest-timeout's own Timer runs during every test: only ours must be gone
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    with pytest.raises(TargetError, match=r"cannot trace pid 42: Frida's attach did not "
                                          r"finish in 0.1 s, 2 times"):
        attach(device, 42, timeout=0.1)
    assert device.calls == 2
    assert not [t for t in threading.enumerate()
                if isinstance(t, threading.Timer) and t not in before]
