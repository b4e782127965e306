"""``run --trigger`` with the stalker backend, the host's side (the agent's is
agent/trigger.js): the function's address found in the program's modules as it starts,
handed to the agent, and each call the agent reports made a snapshot while the program's
thread waits. A part of :class:`~.host.Host`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ...errors import UsageError
from .ending import snapshot_of

if TYPE_CHECKING:
    from ...model import ModuleMap
    from .. import SnapshotEvent, Trigger


class Triggering:
    """The trigger part of the host: :meth:`init_trigger` in its constructor."""

    # the host's, for the type checker
    pid: int
    modules: list[ModuleMap]
    _agent_errors: list[str]
    _generation: int          # execs.py: the images so far (0: the program as it started)

    if TYPE_CHECKING:   # the host's: never shadow them at run time
        def stop(self) -> None: ...

        def _refresh_modules(self) -> None: ...

    def init_trigger(self) -> None:
        #: the function (the first process's), its address once found, and who is told
        #: of a call (the program's thread waits until it returns)
        self.trigger: Trigger | None = None
        self.trigger_at: int | None = None
        self.on_snapshot: Callable[[SnapshotEvent], None] | None = None

    def arm_trigger(self, pid: int) -> None:
        """Find the function in the modules of ``pid`` (attached, not yet resumed); a
        usage error, detached first, when none has it."""
        if self.trigger is None:
            return
        from ..linux.program import function_address

        try:
            self.trigger_at = function_address(self.modules, self.trigger.symbol, pid)
        except UsageError:
            self.stop()
            raise

    def trigger_params(self) -> dict[str, Any] | None:
        """The agent's ``trigger`` parameter (agent/trigger.js, armTrigger): none in an
        image an exec loaded (the address was the first image's)."""
        if self.trigger is None or self.trigger_at is None or self._generation:
            return None
        return {"address": str(self.trigger_at), "nth": self.trigger.nth,
                "every": self.trigger.every, "limit": self.trigger.limit}

    def _on_snapshot(self, p: dict[str, Any], stack: bytes | None = None) -> None:
        """A trigger's call (agent/trigger.js): the snapshot copies the store now."""
        from .. import SnapshotEvent

        if self.on_snapshot is None or self.trigger is None:
            return
        try:
            tid = int(p["tid"])
            event = SnapshotEvent(f"trigger {self.trigger.symbol}, call {int(p['call'])}",
                                  self.pid, tid, int(p["pc"], 0),
                                  snapshot_of(tid, p.get("registers"), stack, p.get("stackBase")))
        except (KeyError, TypeError, ValueError) as err:
            self._agent_errors.append(f"bad snapshot message {p!r}: {err}")
            return
        self._refresh_modules()
        self.on_snapshot(event)
