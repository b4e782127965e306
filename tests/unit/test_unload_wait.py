"""Letting go of a program we attached to (backends/stalker/unload.py, ending.py): the
wait for Frida's agent to leave it, judged from /proc, and a detach that never ends
(a thread asleep in a system call it entered under Stalker) bounded."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from typing import Any

import pytest

from branchtrace.backends.linux.permissions import tracer_of
from branchtrace.backends.stalker import ending
from branchtrace.backends.stalker.unload import (
    Before,
    agent_mapped,
    before_attach,
    frida_left,
    leftover_threads,
    loader_regions,
    task_ids,
    wait_unloaded,
)


def test_a_thread_outside_the_program_is_waited_for() -> None:
    pid = os.getpid()
    before = before_attach(pid)
    assert threading.get_native_id() in before.threads
    go = threading.Event()
    extra = threading.Thread(target=go.wait)
    extra.start()
    try:
        assert leftover_threads(pid, before.threads) == {extra.native_id}
        assert not wait_unloaded(pid, before, set(), timeout=0.05)
        # one the program started (and whatever else this process runs meanwhile)
        now = Before(before.threads, before.agent, frozenset(loader_regions(pid)), before.tracer)
        assert frida_left(pid, now, leftover_threads(pid, before.threads))
    finally:
        go.set()
        extra.join()
    assert wait_unloaded(pid, before, set(), timeout=5.0)
    assert leftover_threads(pid, before.threads) == set()


def _rwx_region(size: int) -> tuple[mmap.mmap, str]:
    """A private anonymous rwx mapping of ours, touched, and its ``start-end`` name."""
    rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=rwx)
    region[0] = 0xc3                     # touched, as the helper's copy is
    view = ctypes.c_char.from_buffer(region)
    start = ctypes.addressof(view)
    del view                             # (an exported buffer keeps mmap from closing)
    return region, f"{start:x}-{start + size:x}"


def test_the_helpers_loader_memory_is_waited_for() -> None:
    """Frida's helper frees its loader's memory (a small anonymous rwx region) in the
    program after the agent has left: a region like it that was not there before the
    attach keeps the wait going until it is unmapped; one that was there does not.
    (This process is the program here: what else it maps or runs meanwhile is counted
    as there before.)"""
    pid = os.getpid()
    before = before_attach(pid)
    assert tracer_of(pid) == before.tracer == 0
    region, name = _rwx_region(72 * 1024)
    try:
        assert name in loader_regions(pid)
        threads = leftover_threads(pid, before.threads)
        others = Before(before.threads, before.agent,
                        frozenset(loader_regions(pid) - {name}), before.tracer)
        assert not frida_left(pid, others, threads)
        assert not wait_unloaded(pid, others, threads, timeout=0.05)
        already = Before(others.threads, others.agent, others.loaders | {name}, others.tracer)
        assert frida_left(pid, already, threads)
    finally:
        region.close()
    assert name not in loader_regions(pid)
    assert wait_unloaded(pid, others, leftover_threads(pid, before.threads), timeout=5.0)


def test_a_large_rwx_region_is_a_jit_not_the_loader() -> None:
    heap, name = _rwx_region(4 << 20)
    try:
        assert name not in loader_regions(os.getpid())
    finally:
        heap.close()


def test_no_agent_here_and_a_gone_process_counts_as_unloaded() -> None:
    assert not agent_mapped(os.getpid())   # the frida module is loaded, not its agent
    gone = 2 ** 22 + 12345                 # past pid_max: no such process
    assert task_ids(gone) == set() and not agent_mapped(gone)
    assert loader_regions(gone) == set() and tracer_of(gone) == 0
    assert wait_unloaded(gone, Before(frozenset(), False, frozenset(), 0), set(), timeout=0.0)


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
