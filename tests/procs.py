"""Waiting on a process through /proc/PID/status, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (empty once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def wait_for_status(pid: int, ok: Callable[[dict[str, str]], bool], what: str,
                    timeout: float = 60) -> dict[str, str]:
    """Poll /proc/PID/status until ``ok(status)``; fail saying ``what`` was awaited and the
    last status seen. Instead of a sleep that hopes the process got there."""
    deadline = time.monotonic() + timeout
    while True:
        status = proc_status(pid)
        if status and ok(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid}: never {what} in {timeout} s; last status: "
                                 f"Name={status.get('Name')} State={status.get('State')} "
                                 f"Uid={status.get('Uid')} TracerPid={status.get('TracerPid')}")
        time.sleep(0.005)


def real_uid(status: dict[str, str]) -> int:
    return int(status["Uid"].split()[0])
