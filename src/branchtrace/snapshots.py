"""Snapshots of a ring-mode run while the program goes on (``run --trigger``, SIGUSR2,
``branchtrace snapshot``): the rings copied at one moment, as a :class:`Trace` whose
exit status is ``"snapshot"``, and with ``-o FILE`` a trace file of that moment.

The copy is made at once (:meth:`Snapshots.take`, called by the backend while the
thread at a trigger waits, or by the worker for a request); the trace is built, the
file written and the report delivered by a worker thread of ours, while the program
runs on. The worker starts with the first snapshot, after the backend's
``prepare`` (the ptrace backend forks there: no thread of ours may exist yet).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .model import ExitInfo

if TYPE_CHECKING:
    import numpy as np

    from .backends import Backend, RunResult, SnapshotEvent, Target
    from .model import Gap, ModuleMap, ProcessInfo
    from .store import Store, StoreConfig
    from .trace import Trace

#: Snapshots ``--trigger-every`` makes at most unless told (``--snapshots N``).
DEFAULT_LIMIT = 16


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot was: its number (1: the first of the run), why it was taken,
    the thread that made it (a trigger's), and the trace file written (or why not)."""

    number: int
    reason: str
    tid: int | None = None
    file: str | None = None
    error: str | None = None


def snapshot_path(output: str, number: int) -> str:
    """Where snapshot ``number`` of a run with ``-o output`` goes: ``NAME.snapshot-N.btrace``
    (``output`` without its ``.btrace``), beside the run's own file."""
    stem = output[:-len(".btrace")] if output.endswith(".btrace") else output
    return f"{stem}.snapshot-{number}.btrace"


@dataclass
class _Copy:
    event: SnapshotEvent
    records: dict[int, np.ndarray]
    written: dict[int, int]
    lost: dict[int, int]
    end_ns: int
    rows: np.ndarray | None
    modules: list[ModuleMap]
    processes: list[ProcessInfo]


class Snapshots:
    """The snapshots of one run. ``deliver(trace, info)`` gets each (from the worker
    thread; it writes the report); ``output``: the run's ``-o`` file, if any."""

    def __init__(self, deliver: Callable[[Trace, SnapshotInfo], None],
                 output: str | None = None) -> None:
        self.deliver = deliver
        self.output = output
        self.count = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Copy | str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._bound: tuple[Store, Backend, StoreConfig, Target, int] | None = None
        self._rows: np.ndarray | None = None     # the block table so far (BLOCKID)

    # -- the recorder's side -------------------------------------------------------------

    def bind(self, store: Store, backend: Backend, config: StoreConfig, target: Target,
             start_ns: int) -> None:
        """The run has started: snapshots copy ``store`` from now on."""
        self._bound = (store, backend, config, target, start_ns)

    def close(self) -> None:
        """The run is over: wait for the snapshots under way to be delivered."""
        worker = self._worker
        if worker is not None:
            self._queue.put(None)
            worker.join()
        self._bound = None
        self._worker = None

    # -- what asks for snapshots -----------------------------------------------------------

    def take(self, event: SnapshotEvent) -> None:
        """A backend's snapshot moment: copy the store now (the thread waits meanwhile)."""
        copy = self._copy(event)
        if copy is not None:
            self._start()
            self._queue.put(copy)

    def request(self, reason: str) -> bool:
        """Ask for a snapshot soon, of the program as it runs (SIGUSR2; safe from a
        signal handler). False when no run is under way."""
        bound = self._bound
        if bound is None:
            return False
        soon = getattr(bound[1], "snapshot_soon", None)   # (a backend without snapshots)
        if soon is not None and soon():   # the ptrace backend stops a thread first
            return True
        self._start()
        self._queue.put(reason)
        return True

    # -- the worker ------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="branchtrace-snapshots",
                                                daemon=True)
                self._worker.start()

    def _work(self) -> None:
        from .backends import SnapshotEvent

        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, str):
                bound = self._bound
                if bound is None:
                    continue
                item = self._copy(SnapshotEvent(item, bound[3].pid or 0))
                if item is None:
                    continue
            try:
                self._make(item)
            except Exception as err:  # noqa: BLE001 - the run goes on: say why, in a line
                self.errors.append(f"snapshot {self.count}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")

    def _copy(self, event: SnapshotEvent) -> _Copy | None:
        bound = self._bound
        if bound is None:
            return None
        store = bound[0]
        records, written = {}, {}
        try:
            for tid in store.tids():
                records[tid], written[tid] = store.peek_live(tid)
            lost = {t.tid: t.lost for t in store.status().threads}
        except Exception:  # noqa: BLE001 - the store is closing: the run is over
            return None
        end_ns = time.time_ns()
        for tid, n in written.items():   # what the copy does not hold was lost to the ring
            lost[tid] = max(lost.get(tid, 0), n - len(records[tid]))
        # the block table and modules now: the backend forgets them when the run ends
        backend = bound[1]
        with self._lock:
            have = 0 if self._rows is None else len(self._rows)
            rows, modules = backend.live(have)
            if rows is not None:
                import numpy as np

                self._rows = rows if self._rows is None else np.concatenate((self._rows, rows))
            return _Copy(event, records, written, lost, end_ns, self._rows, list(modules),
                         list(backend.live_processes()))

    def _make(self, copy: _Copy) -> None:
        from .backends import RunResult
        from .decode import decode
        from .model import Gap, ProcessInfo
        from .trace import Trace

        bound = self._bound
        if bound is None:
            return
        _, backend, config, target, start_ns = bound
        self.count += 1
        number = self.count
        event = copy.event
        rows, modules, processes = copy.rows, copy.modules, copy.processes
        # the first process: its threads' buffers come first in the store (the main
        # thread's first of all: its tid is the pid)
        pid = event.pid or (processes[0].pid if processes else target.pid
                            or next(iter(copy.records), 0))
        exit_info = ExitInfo("snapshot", tid=event.tid, fault_pc=event.pc, stack=event.stack)
        note = f"snapshot {number}: {event.reason}"
        if processes:
            processes = [p if p.pid != pid else
                         ProcessInfo(p.pid, p.ppid, p.argv, exit_info, p.modules, p.threads,
                                     p.start_ns, copy.end_ns) for p in processes]
        tids = list(copy.records)
        if processes:
            known = {t for p in processes for t in p.threads}
            tids = [t for t in tids if t in known] + [t for t in tids if t not in known]
        threads = {tid: decode(config.encoding, copy.records[tid], rows) for tid in tids}
        gaps = [Gap(tid, 0, n, "ring buffer overwrote the oldest records")
                for tid, n in copy.lost.items() if n]
        argv = target.argv or next((p.argv for p in processes if p.pid == pid), ())
        trace = Trace(backend=backend.name, mode=config.mode.name.lower(), argv=argv, pid=pid,
                      exit=exit_info, modules=list(modules), threads=threads, gaps=gaps,
                      written=dict(copy.written), lost=dict(copy.lost), notes=[note],
                      start_time=start_ns / 10**9, end_time=copy.end_ns / 10**9,
                      capacity=config.capacity_records, processes=processes)
        path, error = None, None
        if self.output is not None:
            path = snapshot_path(self.output, number)
            result = RunResult(exit_info, list(modules), tids, [], [note], pid=pid,
                               blocks=rows, processes=processes)
            try:
                _write_file(path, backend, config, target, start_ns, copy, result, gaps)
            except (OSError, ValueError) as err:
                error = f"could not write {path}: {getattr(err, 'strerror', None) or err}"
                path = None
            except Exception as err:  # noqa: BLE001 - StoreError and the like
                error = str(err).splitlines()[0]
                path = None
        self.deliver(trace, SnapshotInfo(number, event.reason, event.tid, path, error))


def _write_file(path: str, backend: Backend, config: StoreConfig, target: Target,
                start_ns: int, copy: _Copy, result: RunResult, gaps: list[Gap]) -> None:
    """The trace file of a snapshot, as ``record`` writes one at the end of a ring run."""
    from ._version import __version__
    from .recorder import Collector, finish_file
    from .tracefile.format import FileHeader
    from .tracefile.writer import TraceWriter

    header = FileHeader(int(config.encoding), int(config.mode), config.record_size,
                        config.capacity_records, config.chunk_records, target.pid or 0,
                        start_ns, backend.name, f"branchtrace {__version__}", target.argv)
    writer = TraceWriter.create(os.fspath(path), header)
    sink = Collector(writer, None, None, start_ns, backend, target.argv)
    try:
        for tid, records in copy.records.items():
            if len(records):
                sink.take(tid, records)
    except BaseException:
        writer.close()
        raise
    waits = {tid: 0 for tid in copy.records}
    finish_file(writer, sink, result, gaps, copy.written, copy.lost, waits, result.pid,
                copy.end_ns)
