"""The Frida side of the Stalker backend: one session on one target.

:class:`Host` attaches to the target (a program :mod:`.launch` left stopped at its
entry point, or a running pid), loads the agent (agent/agent.js, which compiles
agent/recorder.c as a CModule), answers the agent's requests for thread slots in the
store, keeps the module maps up to date, learns how the target ends, and detaches.

Thread slots: the store belongs to the tracer, so only the tracer may call
``store.add_thread``. The agent asks for a slot synchronously (``send`` then
``recv().wait()``) from the new thread itself, before following it: the thread runs
none of its own code until it has a buffer, and a thread that gets none (memory limit)
runs untraced and becomes a :class:`~branchtrace.model.Gap`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...store.blocks import DEFAULT_TABLE_CAPACITY, create_table, table_bytes
from ...errors import BranchtraceError, MemoryLimitError, TargetError, UsageError
from ...model import ExitInfo, Gap, ModuleMap, ProcessInfo
from ...store import HEADER_SIZE, THREAD_ENTRY_SIZE, Store
from ...symbols.maps import merge_modules, modules_from_maps, read_maps
from .agent_code import LoadedAgent, agent_options, agent_source, has_avx512, has_bmi2
from .check import CheckCounters, enabled
from .children import ChildFollowing, ForkCatcher
from .ending import Ending
from ..linux.exits import ExitWatcher
from ..linux.program import read_argv
from .execs import ExecCatcher, ExecFollowing
from . import fillcache, hold
from .messages import Crash, Messages
from .resume import Resuming
from . import fridaattach
from .fridaattach import RETRY_NOTE, attach
from .launch import Attaching, Launcher, check_attachable, mapped_paths
from .unload import Before, before_attach, task_ids
from .triggers import Triggering

_POLL = 0.02  # seconds between checks of the end conditions
_STOP_TIMEOUT = 10.0


@dataclass
class HostResult:
    exit: ExitInfo
    modules: list[ModuleMap]
    threads: list[int]
    gaps: list[Gap]
    notes: list[str] = field(default_factory=list)
    blocks: Any = None
    #: BRANCHTRACE_STALKER_CHECK: blocks each thread executed, counted apart from the store
    check: dict[int, int] | None = None
    #: every process, the first one first (children.py)
    processes: list[ProcessInfo] = field(default_factory=list)


class Host(Messages, Resuming, ExecFollowing, ChildFollowing, Ending, Triggering):
    """One Frida session recording one target into ``store``."""

    def __init__(self, store: Store, only: tuple[str, ...] = (),
                 table_capacity: int = DEFAULT_TABLE_CAPACITY, parent: Host | None = None,
                 follow_children: bool = True, hold_on_crash: bool = False,
                 smc_check: bool = False) -> None:
        #: --smc-check: a child's host does as its parent's
        self.smc_check: bool = parent.smc_check if parent is not None else smc_check
        self.options, option_notes = agent_options(self.smc_check)
        #: run --gdb: hold the program stopped at its crash (holding.py), the first only
        self.hold_on_crash = hold_on_crash and parent is None
        self.holding = False                    # the agent may park the crashing thread
        self.parked: tuple[int, int] | None = None   # (tid, pc): it spins there
        self.store = store
        self.only = only
        self.parent = parent
        if parent is None:
            self.table_capacity = table_capacity
            self.table_path = create_table(store.path.parent, store.path.stem, table_capacity)
            self.check = (CheckCounters(store.path.parent, store.path.stem, 4096)
                          if enabled() else None)
            self.follow_children = follow_children
            self.exits: ExitWatcher | None = None   # start(): exits we do not reap
        else:   # a child (children.py): the same store, block table, device and lock
            self.table_capacity, self.table_path = parent.table_capacity, parent.table_path
            self.check, self.follow_children = parent.check, parent.follow_children
            self.exits = parent.exits
            option_notes = []
        #: children.py: the processes this one started, how many ran untraced, catchers
        self.children: list[Host] = []
        self.untraced_children, self.ppid, self.end_ns, self.start_ns = 0, 0, 0, time.time_ns()
        self._catchers: dict[int, ForkCatcher] = {}
        self._all_catchers: list[ForkCatcher] = []
        self._closing = False   # the run ends: follow no more children
        self.argv: tuple[str, ...] = ()
        self.child_status: int | None = None   # a child that ended before it was followed
        self.pid = 0
        self.threads: list[int] = []
        self.gaps: list[Gap] = []
        self.notes: list[str] = []
        self.notes.extend(option_notes)
        self.modules: list[ModuleMap] = []
        #: modules only Frida's agent loaded (mapped by the attach, not before): left out
        #: of the module map, their code unrecorded, unless the program dlopens them
        self.ours: set[str] = set()
        self._claimed: set[str] = set()
        self.crash: Crash | None = None
        #: the last fault the program's own handler took (messages.py, _take_crash)
        self.handled_crash: Crash | None = None
        self.exit_code: int | None = None     # reported by the agent (attach mode)
        self._lock = parent._lock if parent is not None else threading.Lock()
        self._ended = threading.Event()
        self._interrupted = False
        self._interrupts = 0
        self._session: Any = None
        self._script: Any = None
        self._device: Any = parent._device if parent is not None else None
        #: the program as it was when a stuck attach was given up (fridaattach.attach): the
        #: stuck agent's threads and memory, which stay, are not ours to wait for
        self.stuck: Before | None = None
        #: and the threads its agent added (never followed)
        self.foreign: set[int] = set()
        self._launcher: Launcher | None = None
        self._agent_errors: list[str] = []
        self.detached = True   # stop(): False if Frida's detach did not end in time
        #: exec (execs.py): the sessions so far (one per image), the catcher of an exec
        #: under way, and the thread that goes on in the same store slot in the new image
        self._generation = 0
        self._exec: ExecCatcher | None = None
        self._carried: set[int] = set()
        self._old_detached = threading.Event()
        #: the agent script the attach thread loaded (start), taken by _load_agent
        self._loaded: LoadedAgent | None = None
        self.init_trigger()     # run --trigger (triggers.py)

    # -- starting ------------------------------------------------------------------------

    def start(self, pid: int, launcher: Launcher | None = None,
              start_vaddr: int | None = None, attaching: Attaching | None = None) -> None:
        """Attach to ``pid`` and start recording every thread.

        With a ``launcher`` the target is a program we started, stopped at its entry
        point; it is resumed once its main thread is set to follow itself from there (or
        from ``start_vaddr``, an address of the executable's ELF image), and the
        launcher tells how it ended. ``attaching``: Frida's attach to ``pid``, started
        earlier (the session is taken from it).
        """
        self.pid = pid
        self.argv = read_argv(pid)
        self._launcher = launcher
        if launcher is None or self.follow_children:
            self.exits = ExitWatcher()
        if launcher is not None:
            threading.Thread(target=self._wait_child, args=(launcher,),
                             name="branchtrace-end", daemon=True).start()
        if launcher is None:
            check_attachable(pid)
        self._attach(pid, attaching)
        self._refresh_modules()
        entry = self._start_address(launcher, start_vaddr)
        self.arm_trigger(pid)
        reply = self._load_agent(pid, entry)
        missing = [name for name in self.only if name not in reply["onlyMatched"]]
        if missing:
            self.stop()
            raise UsageError(
                f"--only: no module {', '.join(map(repr, missing))} in pid {pid} "
                f"(modules: {', '.join(reply['modules'])})"
            )
        if launcher is not None:
            launcher.go()
            self._resume(pid)

    def start_child(self, pid: int, entry: int) -> None:
        """A child (children.py), stopped where its main thread is to follow itself."""
        self._attach(pid)
        self._load_agent(pid, str(entry))
        self._resume(pid)

    def _attach(self, pid: int, attaching: Attaching | None = None) -> None:
        """Frida's session on ``pid`` (taken from ``attaching`` when given)."""
        import frida

        before = attaching.before if attaching is not None else mapped_paths(pid)
        try:
            if attaching is not None:
                self._device, self._session = attaching.result()
                self._loaded = attaching.agent
                if attaching.retried:
                    self.notes.append(RETRY_NOTE.format(timeout=fridaattach.ATTACH_TIMEOUT))
            else:
                device = self._device or frida.get_local_device()
                threads = task_ids(pid)

                def retried() -> None:
                    self.stuck = before_attach(pid)
                    # the stuck agent's threads (and any the program started meanwhile:
                    # not told apart, left unfollowed)
                    self.foreign = set(self.stuck.threads - threads)
                    fridaattach.STUCK_THREADS[pid] = frozenset(self.foreign)
                    self.notes.append(RETRY_NOTE.format(timeout=fridaattach.ATTACH_TIMEOUT))

                self._device, self._session = (
                    hold.attach_parked(pid, lambda: attach(device, pid, on_retry=retried))
                    if hold.is_parked(pid) else attach(device, pid, on_retry=retried))
                # a stuck agent of an earlier attach to this pid is still there: its
                # threads are not followed either (following them hung the next attach)
                self.foreign |= fridaattach.STUCK_THREADS.get(pid, frozenset()) & task_ids(pid)
        except frida.ProcessNotFoundError:
            raise TargetError(f"no process with pid {pid}") from None
        except frida.PermissionDeniedError as err:
            from ..linux.permissions import denied_reason

            raise TargetError(f"cannot trace pid {pid}: {err}: {denied_reason(pid)}") from None
        except frida.core.RPCException as err:
            raise TargetError(f"cannot trace pid {pid}: {err}") from None
        except Exception as err:  # frida's errors have no common base class
            if type(err).__module__.startswith(("frida", "_frida")):
                raise TargetError(f"cannot trace pid {pid}: {err}") from None
            raise
        if before is not None:   # what the attach mapped is ours (ours.js)
            self.ours = (mapped_paths(pid) or set()) - before
            self._claimed = set()
        generation = self._generation
        self._session.on("detached",
                         lambda reason, crash: self._on_detached(reason, crash, generation))

    def _load_agent(self, pid: int, entry: str | None) -> dict[str, Any]:
        """Load the agent into the attached ``pid`` and start it; with ``entry`` (a
        program stopped there) the main thread follows itself from that address."""
        import frida

        self._refresh_modules()
        script_source, c_source = agent_source()
        loaded, self._loaded = self._loaded, None
        if loaded is not None:   # loaded by the attach thread (launch.Attaching)
            self._script = loaded.take(self._on_message)
        else:
            self._script = self._session.create_script(script_source, name="branchtrace")
            self._script.on("message", self._on_message)
            self._script.load()
        slots = [self._slot_for(pid)] if entry is not None else []  # the main thread
        params = {
            "source": c_source, "storePath": str(self.store.path),
            "tablePath": str(self.table_path), "tableBytes": table_bytes(self.table_capacity),
            "tableCapacity": self.table_capacity, "regionBytes": self.store.region_bytes,
            "tableOffset": HEADER_SIZE, "entrySize": THREAD_ENTRY_SIZE,
            "capacity": self.store.capacity, "chunk": self.store.chunk_records,
            "mode": int(self.store.mode), "hostPid": os.getpid(), "bmi2": has_bmi2(),
            "avx512": has_avx512(),
            "only": list(self.only), "slots": slots, "ours": sorted(self.ours),
            "foreign": sorted(self.foreign),
            "entry": entry, "started": self._launcher is not None,
            "parked": hold.is_parked(pid),
            "followChildren": self.follow_children, "holdOnCrash": self.hold_on_crash,
            "checkPath": str(self.check.path) if self.check is not None else None,
            "trigger": self.trigger_params(),
            "fillOffset": fillcache.known_offset() if self.options["fastFill"] else None,
            "capOffset": fillcache.known_offset("capstone") if self.options["fastFill"]
            else None,
            **self.options,
        }
        try:
            reply: dict[str, Any] = self._script.exports_sync.init(params)
        except frida.core.RPCException as err:
            raise TargetError(f"the Stalker agent could not start in pid {pid}: {err}") from None
        fillcache.keep_offset(reply.get("fillOffset"))
        fillcache.keep_offset(reply.get("capOffset"), "capstone")
        return reply

    def _start_address(self, launcher: Launcher | None, vaddr: int | None) -> str | None:
        """Where the main thread starts to follow itself (None: attached, no such thing)."""
        if launcher is None:
            return None
        if vaddr is None:
            return str(launcher.entry)
        exe = os.path.realpath(f"/proc/{self.pid}/exe")
        for module in self.modules:
            if os.path.realpath(module.path) == exe:
                return str(vaddr + module.bias)
        raise TargetError(f"cannot find {exe} in the memory map of pid {self.pid}")

    def _slot_for(self, tid: int) -> dict[str, Any]:
        """Give ``tid`` a buffer in the store (or say why not) and remember it."""
        with self._lock:
            if tid not in self.threads:
                self.threads.append(tid)
            if tid in self._carried:   # after an exec: the same thread, the same buffer
                self._carried.discard(tid)
                with contextlib.suppress(BranchtraceError):
                    slot, region_offset = self.store.placement(tid)
                    return {"tid": tid, "index": slot, "regionOffset": region_offset,
                            "checkIndex": self.check.assign(tid) if self.check is not None
                            else None}
            try:
                self.store.add_thread(tid)
            except MemoryLimitError as err:
                self.gaps.append(Gap(tid, 0, 0, f"not recorded: {err}"))
                return {"tid": tid, "error": str(err)}
            except BranchtraceError as err:
                return {"tid": tid, "error": str(err)}
            slot, region_offset = self.store.placement(tid)
            return {"tid": tid, "index": slot, "regionOffset": region_offset,
                    "checkIndex": self.check.assign(tid) if self.check is not None else None}

    def _on_detached(self, reason: str, crash: Any, generation: int = 0) -> None:
        if generation != self._generation:
            return              # the session of an image an exec replaced
        if self._exec is not None:
            self._old_detached.set()
            return              # an exec we follow (_follow_exec), whatever Frida calls it
        if reason in ("process-terminated", "process-replaced"):
            self.end_ns = self.end_ns or time.time_ns()
            self._ended.set()

    def _refresh_modules(self) -> None:
        try:
            maps = read_maps(self.pid)
        except TargetError:
            return
        with self._lock:
            mods = [m for m in modules_from_maps(maps)
                    if m.path not in self.ours or m.path in self._claimed]
            self.modules = merge_modules(self.modules, mods)

    def _wait_child(self, launcher: Launcher) -> None:
        launcher.ended.wait()
        self._ended.set()

    # -- running and ending ----------------------------------------------------------------

    def interrupt(self) -> None:
        """Detach soon (safe from a Python signal handler). The agent hears of it too: a
        Ctrl-C that reached the program as well is then swallowed there (agent.js,
        standInForSigint), and the program goes on."""
        self._interrupted = True
        self._interrupts += 1
        self._post({"type": "interrupt"})

    def wait(self, duration: float | None) -> bool:
        """Until the target ends (True) or we are interrupted or time is up (False)."""
        deadline = None if not duration else time.monotonic() + duration
        while not self._ended.is_set():
            if self.parked is not None:
                return False   # held at its crash: detach, and leave it stopped
            if self._interrupted or (deadline is not None and time.monotonic() >= deadline):
                return False
            self._ended.wait(_POLL)
        return True

