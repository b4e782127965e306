"""The agent's messages to the host, on Frida's thread (mixed into
:class:`~.host.Host`): thread slots, threads gone, module changes, exec and fork
requests, crashes, snapshots and the exit code. A message the agent waits on is always
answered, whatever happens while it is handled."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import BranchtraceError
from ...model import StackSnapshot
from ...store import Store
from .ending import snapshot_of

#: Signals that Frida's exception types stand for.
_SIGNAL_OF_EXCEPTION = {
    "abort": 6, "access-violation": 11, "guard-page": 11, "illegal-instruction": 4,
    "stack-overflow": 11, "arithmetic": 8, "breakpoint": 5, "single-step": 5, "system": 31,
}

@dataclass
class Crash:
    """What the agent saw of a fatal exception, before the program died of it."""

    tid: int
    signal: int
    fault_address: int | None
    fault_pc: int | None
    exact_pc: bool
    stack: StackSnapshot | None = None



class Messages:
    pid: int
    store: Store
    notes: list[str]
    crash: Crash | None
    handled_crash: Crash | None
    exit_code: int | None
    untraced_children: int
    holding: bool
    hold_on_crash: bool
    parked: tuple[int, int] | None
    _lock: Any
    _claimed: set[str]
    _script: Any
    _exec: Any
    _agent_errors: list[str]

    def _on_message(self, message: dict[str, Any], data: bytes | None) -> None:
        if message.get("type") == "error":
            self._agent_errors.append(str(message.get("description", message)))
            return
        payload = message.get("payload") or {}
        kind = payload.get("type")
        if kind == "slots":  # the thread waits for the answer: always give one
            slots: list[dict[str, Any]] = []
            try:
                slots = [self._slot_for(int(tid)) for tid in payload["tids"]]
            finally:
                self._post({"type": payload["key"], "slots": slots})
        elif kind == "gone":
            if self._exec is not None and int(payload["tid"]) == self.pid:
                return   # the main thread goes on in the new image, in the same slot
            with self._lock:
                try:
                    self.store.mark_exited(int(payload["tid"]))
                except BranchtraceError:
                    pass
        elif kind == "modules":
            self._refresh_modules()
        elif kind == "claim":  # the program dlopened a library Frida's agent had loaded
            with self._lock:
                self._claimed.add(str(payload.get("path", "")))
            self._refresh_modules()
        elif kind == "note":  # the agent's warning (the AVX-512 fix could not be applied)
            self.notes.append(str(payload.get("text", "")))
        elif kind == "exec":
            ok = False
            try:
                ok = self._on_exec(int(payload["tid"]), payload.get("path"))
            finally:
                self._post({"type": payload["key"], "ok": ok})
        elif kind == "fork":
            ok = False
            try:
                ok = self._on_fork(int(payload["tid"]), payload.get("ret"))
            finally:
                self._post({"type": payload["key"], "ok": ok})
        elif kind == "fork-done":
            try:
                self._on_fork_done(int(payload["tid"]))
            finally:
                self._post({"type": payload["key"]})
        elif kind == "child":   # not following children: count them
            self.untraced_children += 1
        elif kind == "exec-failed":
            try:
                self._on_exec_failed(payload.get("errno"))
            finally:
                self._post({"type": payload["key"]})
        elif kind == "crash":
            hold = False
            try:
                self._on_crash(payload, data)
                hold = (bool(payload.get("hold")) and self.hold_on_crash and not self.holding
                        and self.crash is not None and self.crash.fault_pc is not None)
                self.holding = self.holding or hold
            finally:
                self._post({"type": "crash-ack", "hold": hold})
        elif kind == "parked":
            self.parked = (int(payload["tid"]), int(payload["page"], 0))
        elif kind == "snapshot":
            try:
                self._on_snapshot(payload, data)
            finally:
                self._post({"type": "snapshot-ack"})
        elif kind == "exit":
            try:
                self.exit_code = int(payload["code"])
                self._refresh_modules()
            finally:
                self._post({"type": "exit-ack"})

    def _post(self, message: dict[str, Any]) -> None:
        script = self._script
        if script is not None:
            with contextlib.suppress(Exception):  # the session is going away: nobody waits
                script.post(message)

    def _on_crash(self, p: dict[str, Any], stack: bytes | None = None) -> None:
        try:
            self._refresh_modules()
            real, block, memory = p.get("realPc"), p.get("block"), p.get("memory")
            # the agent's realPc is the program's instruction (crash.js, realFault); without
            # one, the start of the last block the thread recorded (the fault is in it)
            pc = int(real, 0) if real else int(block["start"], 0) if block else None
            crash = Crash(
                tid=int(p["tid"]),
                signal=int(p.get("signal") or _SIGNAL_OF_EXCEPTION.get(p.get("kind", ""), 0)),
                fault_address=int(memory, 0) if memory is not None else None,
                fault_pc=pc, exact_pc=bool(real),
                stack=snapshot_of(int(p["tid"]), p.get("registers"), stack,
                                  p.get("stackBase")),
            )
            self._take_crash(crash, bool(p.get("handled")), bool(p.get("sent")))
            if p.get("error"):
                self._agent_errors.append(f"crash report: {p['error']}")
            if p.get("stackError"):
                self.notes.append(f"pid {self.pid}: no copy of the crashed thread's stack: "
                                  f"{p['stackError']}")
        except (KeyError, TypeError, ValueError) as err:
            self._agent_errors.append(f"bad crash report {p!r}: {err}")

    def _take_crash(self, crash: Crash, handled: bool, sent: bool) -> None:
        """A fault the program's own handler took (``handled``) is kept aside: if the
        handler gives up and raises the signal again in the same thread (``sent``:
        Python's faulthandler, a crash reporter), the program dies of the raise, whose
        pc is in ``raise``; the fault it reported is the one to show."""
        if handled:
            self.handled_crash = crash
            return
        earlier = self.handled_crash
        if (sent and earlier is not None and earlier.tid == crash.tid
                and earlier.signal == crash.signal):
            self.crash = earlier
            self.notes.append(
                f"pid {self.pid}: the program's own handler took signal {crash.signal} "
                f"first, in thread {crash.tid}, and raised it again: the fault shown is the "
                "one it took, not the raise")
            return
        self.crash = crash

    # -- the host's and the other mixins', for the type checker only: a stub here would
    # come before theirs in the host's method order

    if TYPE_CHECKING:
        def _slot_for(self, tid: int) -> dict[str, Any]:
            raise NotImplementedError

        def _refresh_modules(self) -> None:
            raise NotImplementedError

        def _on_exec(self, tid: int, path: str | None) -> bool:
            raise NotImplementedError

        def _on_exec_failed(self, errno: Any) -> None:
            raise NotImplementedError

        def _on_fork(self, tid: int, ret: str | None) -> bool:
            raise NotImplementedError

        def _on_fork_done(self, tid: int) -> None:
            raise NotImplementedError

        def _on_snapshot(self, p: dict[str, Any], stack: bytes | None = None) -> None:
            raise NotImplementedError
