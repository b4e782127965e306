"""Letting a program go once the agent is in: Frida's hold ends, and a process parked
where it is to be followed from (hold.py) gets its code back, with the agent's probe
armed there first (mixed into :class:`~.host.Host`)."""

from __future__ import annotations

import contextlib
from typing import Any

from . import hold
from .launch import continue_if_stopped


class Resuming:
    notes: list[str]
    _device: Any
    _script: Any

    def _resume(self, pid: int) -> None:
        """Let the program, held by Frida at its entry point or parked, run (under
        Stalker)."""
        import frida

        parked = hold.is_parked(pid)
        try:
            self._device.resume(pid)
        except (frida.InvalidArgumentError, frida.InvalidOperationError) as err:
            # parked: Frida let go of it after its attach (it was not stopped). Not
            # parked: seen once in ~35 runs of the benchmark's stock variant, the
            # program had run on before it was followed; say so, never die of it
            if not parked:
                caught = False
                with contextlib.suppress(Exception):  # frida's errors: no common base
                    caught = bool(self._script.exports_sync.catch_up())
                self.notes.append(f"Frida did not hold pid {pid} at its entry point "
                                  f"(resume: {err}): its first instructions may be missing"
                                  + ("; followed from where it was" if caught else ""))
        if parked:
            self._unpark(pid)
        continue_if_stopped(pid)

    def _unpark(self, pid: int) -> None:
        """A child or a new image, parked where it is to be followed from and let go by
        Frida: give it its code back and, while it is held there, have the agent arm its
        probe there (not at the place: follow it from where it is)."""
        def arm() -> None:
            with contextlib.suppress(Exception):  # frida's errors: no common base
                self._script.exports_sync.arm(False)

        try:
            hold.unpark(pid, while_held=arm)
        except hold.UnparkError as err:
            with contextlib.suppress(Exception):
                self._script.exports_sync.arm(True)
            self.notes.append(f"pid {pid} did not wait where it was to be followed from "
                              f"({err}): followed from where it was")
