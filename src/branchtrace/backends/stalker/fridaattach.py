"""Frida's attach, bounded: given up after a time and made again through a new host.

Frida 17.26.2's attach can wait forever. Under load, about one attach in 2,300
back-to-back attach-detach cycles of one program never returned (CI failed on it).
Caught in that state: Frida's new agent loaded in the program with its threads asleep,
its control connection to us established with nothing queued either way, Frida's
helper idle; both ends wait for the other. Trying again on the same device waited
too, every time: Frida's host makes an attach to a pid wait until the agent it injected
there before has left (``wait_for_uninject_of_pid`` in frida-core), and the stuck one
never leaves. A new ``DeviceManager`` has a host of its own, with no such agent on its
books: its attach injects a fresh agent, which answers (docs/stalker.md, Limits).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ...errors import TargetError

#: The trace's note when an attach was tried again (:func:`attach`).
RETRY_NOTE = ("Frida's attach did not answer in {timeout:g} s; attached again through a "
              "new Frida host (the agent of the first attach stays in the program, idle)")

#: Frida's agent without its exit monitor, which hooks exit, _exit and abort before our
#: script runs. A child the program forks before our fork hook is made (or after it is
#: gone) keeps those hooks; its first call of them made Interceptor allocate in Frida's
#: heap, whose spin lock a thread of Frida's held at the fork, busy loading our script:
#: the child spun on it for ever (a program that forks and ``_exit``s: 6 of 40 attaches
#: left one; 0 of 75 without the monitor). We need no exit monitor: what a dying program
#: leaves is in the store, and the agent's messages at an exit or a crash wait for our
#: answer (docs/stalker.md, "A forked child and the hooks").
SESSION_OPTIONS = {"exit_monitor": False}

#: How long one Frida attach may take (it takes ~0.1 s; ~1 s on a machine busy 3 times over).
ATTACH_TIMEOUT = 15.0


def attach(device: Any, pid: int, timeout: float | None = None, tries: int = 2,
           on_retry: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """``device.attach(pid)``, given up after ``timeout`` seconds (default
    ``ATTACH_TIMEOUT``) and tried again on a device of a new Frida host (module doc):
    ``(device, session)``, the device the session is of.

    The attach is cancelled (a ``frida.Cancellable``); the program runs on meanwhile, it
    is never stopped by this, and the stuck agent stays in it, idle. ``on_retry`` is
    called before each new try. The old host would make every later attach to that pid
    wait the same way, so later attaches to it go through the new one. Raises
    ``TargetError`` when every try timed out."""
    import frida

    timeout = ATTACH_TIMEOUT if timeout is None else timeout
    device = _HOST_FOR_PID.get(pid, device)
    for attempt in range(tries):
        if attempt:
            if on_retry is not None:
                on_retry()
            device = fresh_local_device()
        cancellable = frida.Cancellable()  # type: ignore[no-untyped-call]
        timer = threading.Timer(timeout, cancellable.cancel)
        timer.daemon = True
        timer.start()
        try:
            with cancellable:
                session = device.attach(pid, **SESSION_OPTIONS)
            if attempt:
                _HOST_FOR_PID[pid] = device
            return device, session
        except frida.OperationCancelledError:
            continue
        finally:
            timer.cancel()
    raise TargetError(f"cannot trace pid {pid}: Frida's attach did not finish in "
                      f"{timeout:g} s, {tries} times")


#: Frida hosts made by :func:`fresh_local_device`, kept for as long as we run.
_HOSTS: list[Any] = []
#: The device to attach to a pid with, where the default one had an attach stuck.
_HOST_FOR_PID: dict[int, Any] = {}
#: The threads the stuck agent added to a pid (host.py): never followed, then or later.
STUCK_THREADS: dict[int, frozenset[int]] = {}


def fresh_local_device() -> Any:
    """The local device of a new Frida ``DeviceManager``: a host of its own (its own
    books of the agents it injected), where ``frida.get_local_device()`` always gives
    the one of the process-wide manager."""
    import frida

    manager = frida.core.DeviceManager(frida._frida.DeviceManager())
    _HOSTS.append(manager)
    return manager.get_device_by_type("local", 0)
