"""The Stalker backend: Frida's Stalker with inline recording, ring or lossless stream.

Every thread of the target runs under Stalker, which recompiles the program block by
block; our transform (agent/recorder.c, a CModule) puts a few flag-free instructions
at the start of every block that append the block's 32-bit id to the thread's buffer
in the shared store. Each block is described once in the block table
(:mod:`branchtrace.store.blocks`), and decode turns id sequences into branches. About 1-2 ns
per block: a few times slower than the program, not a million. docs/stalker.md has
the design.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from ...errors import UsageError
from .. import Backend, Probe, RecordOptions, RunResult, Target

if TYPE_CHECKING:
    import numpy as np

    from ...model import ModuleMap
    from ...store import Encoding, Store, StoreMode
    from .host import Host
    from .launch import Attaching, Launcher

#: How long an attached program is left alone after Frida's agent left it (record()).
ATTACH_SETTLE_S = 0.25
#: How long record() waits for the agent to leave an attached program after the detach.
UNLOAD_WAIT_S = 5.0

#: The most records a thread's buffer may hold: the emitted code addresses it with
#: 32-bit displacements.
MAX_CAPACITY = 1 << 28


class StalkerBackend(Backend):
    name = "stalker"
    description = "Frida Stalker with inline recording; every thread, a few times native speed"

    @property
    def encoding(self) -> Encoding:
        from ...store import Encoding

        return Encoding.BLOCKID

    def __init__(self, only: tuple[str, ...] = ()) -> None:
        #: report only branches into or out of these modules (names or paths)
        self.only = tuple(only)
        self._host: Host | None = None
        self._interrupted = False
        #: BRANCHTRACE_STALKER_CHECK=1: per thread, the blocks the last record() counted
        #: apart from the store (check.py); None when off
        self.check_counts: dict[int, int] | None = None
        #: start_early(): the target, its launcher and Frida's attach, for record()
        self._early: tuple[Target, Launcher, Attaching] | None = None

    def probe(self) -> Probe:
        return _probe()

    def store_capacity(self, requested: int, mode: StoreMode) -> int:
        """Any capacity works (the ring wraps with jrcxz, the stream by whole chunks);
        past :data:`MAX_CAPACITY` :meth:`record` refuses (the store's memory limit
        usually refuses first)."""
        return requested

    def interrupt(self) -> None:
        self._interrupted = True
        host = self._host
        if host is not None:
            host.interrupt()

    def live(self, first_id: int) -> tuple[np.ndarray | None, list[ModuleMap]]:
        """While a run goes on: the block-table entries complete so far from id
        ``first_id`` on, and the modules known so far. A trace file being written gets
        them as it goes, so a file cut short (branchtrace killed) still decodes."""
        from ...store.blocks import read_complete_rows

        host = self._host
        if host is None:
            return None, []
        return read_complete_rows(host.table_path, first_id), list(host.modules)

    def start_early(self, target: Target) -> None:
        """Start ``target`` (a program to run) to its entry point and Frida's attach to
        it now, before the store exists: the caller imports the rest meanwhile (numpy
        and the store take ~0.1 s, and so does the attach, mostly spent in the target
        loading Frida's agent). :meth:`record` of the same target takes them over;
        :meth:`cancel_early` kills the program if it never comes."""
        from ..linux.program import find_program
        from .launch import Attaching, Launcher

        if target.pid is not None:
            return
        self.cancel_early()
        find_program(target.argv[0])
        launcher = Launcher(target.argv, target.env, target.disable_aslr, target.ptracer)
        launcher.spawn()
        try:
            from .fridaload import load

            load()  # ~25 ms (asyncio deferred), while the reaper starts the program

            attaching = Attaching(launcher.ready(), load_agent=True)
        except BaseException:
            launcher.abandon()
            raise
        self._early = (target, launcher, attaching)

    def cancel_early(self) -> None:
        """The program :meth:`start_early` started will not be recorded: kill it."""
        self._take_early(None)

    def _take_early(self, target: Target | None) -> tuple[Launcher, Attaching] | None:
        """What :meth:`start_early` started for ``target``; anything else is cancelled."""
        early, self._early = self._early, None
        if early is None:
            return None
        if early[0] == target:
            return early[1], early[2]
        early[1].cancel(early[2])
        return None

    def record(self, target: Target, store: Store, options: RecordOptions) -> RunResult:
        from ..linux.program import find_program, start_vaddr
        from .host import Host
        from .launch import Launcher
        from .unload import Before, before_attach, wait_unloaded

        if store.capacity > MAX_CAPACITY:
            raise UsageError(
                f"the stalker backend takes at most {MAX_CAPACITY} records per thread, "
                f"not {store.capacity}"
            )
        self._interrupted = False
        self.check_counts = None
        notes: list[str] = []
        vaddr: int | None = None
        if target.pid is None:
            path = find_program(target.argv[0])
            if options.start not in (None, "entry"):
                vaddr, note = start_vaddr(path, options.start)
                notes.extend([note] if note else [])
        elif options.start not in (None, "entry"):
            notes.append("--start only applies to programs we start; attached from now on")
        only = self.only or options.only  # the constructor's, else --only
        host = Host(store, only, follow_children=options.follow_children,
                    hold_on_crash=options.hold_on_crash, smc_check=options.smc_check)
        host.trigger, host.on_snapshot = options.trigger, options.on_snapshot
        self._host = host
        if self._interrupted:
            host.interrupt()
        before: Before | None = None
        try:
            if target.pid is not None:
                before = before_attach(target.pid)
                host.start(target.pid)
            else:
                early = self._take_early(target)
                attaching: Attaching | None
                if early is not None:
                    launcher, attaching = early
                    pid = launcher.pid
                else:
                    launcher = Launcher(target.argv, target.env, target.disable_aslr, target.ptracer)
                    pid = launcher.start()
                    attaching = None
                try:
                    host.start(pid, launcher, vaddr, attaching)
                except BaseException:
                    launcher.cancel(attaching)
                    raise
            ended = host.wait(options.duration)
            if not ended:
                host.stop()
            result = host.finish(ended)
            self.check_counts = result.check
        finally:
            self._host = None
            host.stop()
            host.close()
            if before is not None and target.pid is not None and host.detached:
                # Frida finishes unloading its agent from the program after detach
                # returns; attaching again before that (record() called back to back in
                # one process) killed the program within a few cycles (SIGSEGV or
                # SIGTRAP), or never came back. Wait until the agent is gone (unload.py),
                # then leave the program a moment more, so that a next attach meets a
                # clean process.
                if not wait_unloaded(target.pid, host.stuck or before, set(host.threads),
                                     UNLOAD_WAIT_S):
                    notes.append("Frida's agent was still leaving the program "
                                 f"{UNLOAD_WAIT_S:g} s after the detach")
                time.sleep(ATTACH_SETTLE_S)
        return RunResult(result.exit, result.modules, result.threads, result.gaps,
                         notes + result.notes, pid=host.pid, blocks=result.blocks,
                         processes=result.processes)


_probe_cache: Probe | None = None
_probe_lock = threading.Lock()


def _probe() -> Probe:
    """frida importable, Linux x86-64, and attaching to a stopped test program works.

    The answer of the real test (~0.3 s: a program started, attached, an agent loaded)
    is kept in ``~/.cache/branchtrace/stalker-probe.json`` for as long as the installed
    Frida, the kernel and the boot stay the same."""
    global _probe_cache
    with _probe_lock:
        if _probe_cache is None:
            key = _probe_key()
            _probe_cache = _cached_probe(key)
            if _probe_cache is None:
                _probe_cache = _probe_uncached()
                if key is not None:
                    _keep_probe(key, _probe_cache)
        return _probe_cache


def _probe_key() -> dict[str, str] | None:
    try:
        # Frida's binary module as installed (path, size, time): importing frida takes
        # ~50 ms, which start_early spends while the program starts
        import importlib.util

        spec = importlib.util.find_spec("frida")  # finds it, does not import it
        if spec is None or not spec.origin:
            return None
        where = os.path.dirname(spec.origin)
        binary = min(n for n in os.listdir(where) if n.startswith("_frida") and ".so" in n)
        st = os.stat(os.path.join(where, binary))
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return {"frida": f"{where}/{binary}:{st.st_size}:{st.st_mtime_ns}",
                "kernel": os.uname().release, "boot": boot, "uid": str(os.getuid())}
    except Exception:  # noqa: BLE001 - no key, no cache
        return None


def _probe_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "branchtrace", "stalker-probe.json")


def _cached_probe(key: dict[str, str] | None) -> Probe | None:
    import json

    if key is None or os.environ.get("BRANCHTRACE_PROBE_CACHE") == "0":
        return None
    try:
        with open(_probe_file(), encoding="utf-8") as f:
            kept = json.load(f)
        if kept.get("key") == key and isinstance(kept.get("available"), bool):
            return Probe(kept["available"], f"{kept['reason']} (cached)")
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return None


def _keep_probe(key: dict[str, str], probe: Probe) -> None:
    import json
    import tempfile

    path = _probe_file()
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".probe-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "available": probe.available, "reason": probe.reason}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next run tests again


def _probe_uncached() -> Probe:
    from .agent_code import machine_ok

    why = machine_ok()
    if why:
        return Probe(False, why)
    from .fridaload import load

    try:
        frida = load()
    except ImportError:
        return Probe(False, "the frida package is not installed (pip install frida)")
    import shutil

    true = shutil.which("true") or "/bin/true"
    from .fridaattach import attach
    from .launch import Launcher

    launcher = Launcher((true,))
    try:
        pid = launcher.start()
    except Exception as err:  # noqa: BLE001 - any failure means "cannot run here"
        return Probe(False, f"cannot start a test program under ptrace: {err}")
    try:
        device = frida.get_local_device()
        device, session = attach(device, pid)
        script = session.create_script("send(Process.arch)")
        got: list[object] = []
        script.on("message", lambda m, d: got.append(m.get("payload")))
        script.load()
        script.unload()
        session.detach()
        # the test program never runs: let go, `true` waited in exit on a lock of the
        # agent's teardown, 4 probes in 30 (each then waited out the 5 s below)
        launcher.cancel()
        if got != ["x64"]:
            return Probe(False, f"Frida attached but its agent did not answer ({got})")
        return Probe(True, f"Frida {frida.__version__} attaches here (tested on a stopped "
                           "program)")
    except Exception as err:  # noqa: BLE001
        return Probe(False, f"Frida cannot attach here: {err}")
    finally:
        launcher.cancel()   # nothing once it runs on its own (go)
        if not launcher.ended.wait(5):
            os.kill(pid, signal.SIGKILL)
