"""After the detach from a program we attached to: wait until Frida's agent has left it.

``session.detach()`` returns once the agent has closed its session; the agent then
unloads itself from the program: its threads end and its library is unmapped, a few
milliseconds later on an idle machine, much later on a loaded one. An attach that
meets an agent on its way out (``record()`` called back to back on one pid) went
wrong: the program died of SIGSEGV or SIGTRAP, or the new agent never answered and
Frida's attach waited for ever (once in CI, with a CPU hog, twice in a row). So
:func:`wait_unloaded` waits until the old agent is gone, judged from ``/proc``: no
mapping of Frida's agent library, and no thread left that the program had neither
before the attach nor started while we followed it.
"""

from __future__ import annotations

import os
import time

#: The name Frida's agent library has in the program's memory map.
AGENT_MAPPING = "frida-agent"


def task_ids(pid: int) -> set[int]:
    """The thread ids of ``pid`` (empty once it is gone)."""
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:   # gone, or not ours to read (attach then says why)
        return set()


def agent_mapped(pid: int) -> bool:
    """Whether ``pid`` still maps Frida's agent library (False once it is gone)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return any(AGENT_MAPPING in line for line in f)
    except OSError:   # gone, or not ours to read (attach then says why)
        return False


def leftover_threads(pid: int, program: set[int]) -> set[int]:
    """``pid``'s threads that are not in ``program``: the agent's, on their way out."""
    return task_ids(pid) - program


def wait_unloaded(pid: int, program: set[int], timeout: float = 5.0,
                  poll: float = 0.002, mapping: bool = True) -> bool:
    """Wait until ``pid`` has no thread outside ``program`` (the threads it had before
    the attach and those we followed) and, if ``mapping``, maps no agent library (not
    asked when it did before the attach: another tool's agent, or one that stayed);
    True if it came to that within ``timeout`` seconds, or the process is gone."""
    deadline = time.monotonic() + timeout
    while True:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        if not (mapping and agent_mapped(pid)) and not leftover_threads(pid, program):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
