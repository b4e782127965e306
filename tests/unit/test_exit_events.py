"""linux/exits.py reads the kernel's process events: messages built here by hand."""

from __future__ import annotations

import struct

from branchtrace.backends.linux import exits


def message(what: int, pid: int, tgid: int, code: int) -> bytes:
    event = struct.pack("=IIQ", what, 0, 123) + struct.pack("=IIII", pid, tgid, code, 17)
    cn = struct.pack("=IIIIHH", exits.CN_IDX_PROC, exits.CN_VAL_PROC, 0, 0, len(event), 0)
    body = cn + event
    return struct.pack("=IHHII", 16 + len(body), exits.NLMSG_DONE, 0, 0, 0) + body


def watcher() -> exits.ExitWatcher:
    return exits.ExitWatcher(listen=False)   # no socket: only the parsing


def test_a_process_exit_gives_its_wait_status() -> None:
    w = watcher()
    w._take(message(exits.PROC_EVENT_EXIT, 41, 41, 0xD))       # killed by SIGPIPE
    w._take(message(exits.PROC_EVENT_EXIT, 42, 42, 3 << 8))    # exit(3)
    assert w.status(41) == 0xD and w.status(42) == 3 << 8


def test_a_thread_exit_and_other_events_are_not_a_process_exit() -> None:
    w = watcher()
    w._take(message(exits.PROC_EVENT_EXIT, 51, 50, 0))        # a thread of 50
    w._take(message(0x00000002, 60, 60, 0))                   # PROC_EVENT_EXEC
    assert w.status(50) is None and w.status(51) is None and w.status(60) is None


def test_several_messages_in_one_read() -> None:
    w = watcher()
    w._take(message(exits.PROC_EVENT_EXIT, 70, 70, 9) + message(exits.PROC_EVENT_EXIT, 71, 71, 0))
    assert (w.status(70), w.status(71)) == (9, 0)


def test_a_closed_watcher_leaves_no_thread_and_no_descriptor() -> None:
    """close() ends the reading thread at once, with no process exiting meanwhile: a
    recv blocked on the socket did not notice its close, and every attach left a thread
    behind (121 threads after 120 attach cycles in one process)."""
    import os

    import pytest

    fds = len(os.listdir("/proc/self/fd"))
    w = exits.ExitWatcher()
    if not w.available:
        pytest.skip(f"no live watcher here: {w.reason}")
    thread = w._thread
    assert thread.is_alive()
    w.close()
    assert not thread.is_alive()
    assert len(os.listdir("/proc/self/fd")) == fds
    w.close()   # twice is harmless
