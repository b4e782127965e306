"""Letting go of a program we attached to (backends/stalker/unload.py, ending.py): the
wait for Frida's agent to leave it, judged from /proc, and a detach that never ends
(a thread asleep in a system call it entered under Stalker) bounded."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from branchtrace.backends.stalker import ending
from branchtrace.backends.stalker.unload import (
    agent_mapped,
    leftover_threads,
    task_ids,
    wait_unloaded,
)


def test_a_thread_outside_the_program_is_waited_for() -> None:
    pid = os.getpid()
    program = task_ids(pid)
    assert threading.get_native_id() in program
    go = threading.Event()
    extra = threading.Thread(target=go.wait)
    extra.start()
    try:
        assert leftover_threads(pid, program) == {extra.native_id}
        assert not wait_unloaded(pid, program, timeout=0.05)
    finally:
        go.set()
        extra.join()
    assert wait_unloaded(pid, program, timeout=5.0)
    assert leftover_threads(pid, program) == set()


def test_no_agent_here_and_a_gone_process_counts_as_unloaded() -> None:
    assert not agent_mapped(os.getpid())   # the frida module is loaded, not its agent
    gone = 2 ** 22 + 12345                 # past pid_max: no such process
    assert task_ids(gone) == set() and not agent_mapped(gone)
    assert wait_unloaded(gone, set(), timeout=0.0)


class StuckSession:
    """A detach that does not return until it is let go, as Frida's does while a thread
    of the program sleeps in a system call inside Stalker's code."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def detach(self) -> None:
        self.release.wait(30)


class Script:
    class exports_sync:   # noqa: N801 - Frida's name
        @staticmethod
        def stop() -> dict[str, Any]:
            return {}

    def unload(self) -> None:
        pass


class Stopping(ending.Ending):
    def __init__(self, session: Any) -> None:
        self._script, self._session = Script(), session
        self.notes, self.parent, self.parked = [], None, None
        self._interrupted, self.detached = False, True


def test_a_detach_that_never_ends_is_given_up_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ending, "_END_DETACH_WAIT", 0.2)
    session = StuckSession()
    host = Stopping(session)
    t0 = time.monotonic()
    try:
        host.stop()
        assert time.monotonic() - t0 < 10
        assert host.detached is False
        assert any("system call when we detached" in n for n in host.notes), host.notes
    finally:
        session.release.set()


def test_a_detach_that_ends_leaves_no_note() -> None:
    session = StuckSession()
    session.release.set()
    host = Stopping(session)
    host.stop()
    assert host.detached is True and host.notes == []
