"""After the detach from a program we attached to: wait until Frida has left it.

``session.detach()`` returns once the agent has closed its session; Frida then takes
itself out of the program in two steps, a few milliseconds later on an idle machine,
much later on a loaded one:

1. the agent unloads itself: its threads end and its library is unmapped;
2. Frida's helper (a separate process) sees the agent's last thread end (it looks
   every 50 ms), attaches to the program with ptrace again, and calls ``munmap`` in it
   to free the loader's memory (an anonymous ``rwx`` region of ~72 KiB: the
   bootstrapper's code and the loader thread's stack), then detaches.

An attach that meets either step unfinished (``record()`` called back to back on one
pid) went wrong: the program died of SIGTRAP (the helper's remote call trapped with no
tracer left to catch it) or SIGSEGV, or the new agent never answered and Frida's
attach waited for ever (CI, with a CPU hog, ~1 cycle in 2,300; with no settling time
at all, 19 deaths and one such wait in 61 cycles). So :func:`wait_unloaded` waits
until both are done, judged from ``/proc``: no mapping of Frida's agent library, no
thread the program had neither before the attach nor started while we followed it, no
small anonymous ``rwx`` region that was not there before the attach, and the tracer
(``TracerPid``) it had before.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..linux.permissions import tracer_of

#: The name Frida's agent library has in the program's memory map.
AGENT_MAPPING = "frida-agent"
#: The largest region taken for the helper's loader memory (72 KiB seen: the
#: bootstrapper's pages plus a 64 KiB stack); a JIT's code heaps are far larger.
LOADER_REGION_MAX = 256 * 1024


def task_ids(pid: int) -> set[int]:
    """The thread ids of ``pid`` (empty once it is gone)."""
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:   # gone, or not ours to read (attach then says why)
        return set()


def _maps(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return f.readlines()
    except OSError:   # gone, or not ours to read (attach then says why)
        return []


def agent_mapped(pid: int) -> bool:
    """Whether ``pid`` still maps Frida's agent library (False once it is gone)."""
    return any(AGENT_MAPPING in line for line in _maps(pid))


def loader_regions(pid: int) -> set[str]:
    """``pid``'s small anonymous private ``rwx`` regions (``start-end``): where Frida's
    helper puts its loader, until it frees it."""
    found = set()
    for line in _maps(pid):
        fields = line.split()
        if len(fields) != 5 or fields[1] != "rwxp":   # no path: anonymous
            continue
        start, _, end = fields[0].partition("-")
        if int(end, 16) - int(start, 16) <= LOADER_REGION_MAX:
            found.add(fields[0])
    return found


@dataclass(frozen=True)
class Before:
    """What the program was like before the attach, to tell Frida's leftovers from it."""

    threads: frozenset[int]
    agent: bool          # another agent was mapped already (not ours to wait for)
    loaders: frozenset[str]
    tracer: int


def before_attach(pid: int) -> Before:
    return Before(frozenset(task_ids(pid)), agent_mapped(pid),
                  frozenset(loader_regions(pid)), tracer_of(pid))


def leftover_threads(pid: int, program: set[int] | frozenset[int]) -> set[int]:
    """``pid``'s threads that are not in ``program``: the agent's, on their way out."""
    return task_ids(pid) - program


def frida_left(pid: int, before: Before, followed: set[int]) -> bool:
    """Whether Frida is done with ``pid``: both steps of the module's doc, judged
    against ``before`` (``followed``: the threads the program started while traced)."""
    return (not (not before.agent and agent_mapped(pid))
            and not leftover_threads(pid, before.threads | followed)
            and loader_regions(pid) <= before.loaders
            and tracer_of(pid) == before.tracer)


def wait_unloaded(pid: int, before: Before, followed: set[int], timeout: float = 5.0,
                  poll: float = 0.002) -> bool:
    """Wait until Frida is done with ``pid`` (:func:`frida_left`); True if it came to
    that within ``timeout`` seconds, or the process is gone."""
    deadline = time.monotonic() + timeout
    while True:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        if frida_left(pid, before, followed):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
