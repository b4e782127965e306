"""Record a target: choose a backend, configure the store, run, collect a :class:`Trace`,
and write it to a trace file if asked.

This is the engine behind ``branchtrace run`` and ``branchtrace attach`` and the Python
API. It never prints: what the user should know travels in the trace (``notes``,
``gaps``), through the optional ``on_start`` callback and a :class:`RecordListener`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from ._version import __version__
from .api_types import BackendName, Mode
from .backends import (
    Backend,
    Choice,
    RecordOptions,
    RunResult,
    Target,
    Trigger,
    select,
)
from .errors import StoreError, UsageError
from .model import Gap, ModuleMap, ProcessInfo
from .store import (
    RECORD_DTYPES,
    Encoding,
    Store,
    StoreConfig,
    StoreMode,
    StreamConsumer,
)
from .store.sizes import parse_byte_size, parse_size

if TYPE_CHECKING:
    from .snapshots import Snapshots
    from .trace import Trace
    from .tracefile.writer import TraceWriter

# The decoder, the Trace and the trace file's writer are imported where they are used:
# `branchtrace run` imports this module while Frida attaches, and the agent's load
# waits for these imports (~25 ms), which the decoding at the end does not need sooner.


@dataclass(frozen=True)
class RecordConfig:
    """How to record: which backend, the store's mode and sizes, when to start, how
    long, what to follow. Sizes are strings as the command line takes them."""

    backend: BackendName = "auto"
    mode: Mode = "ring"
    buffer: str | None = None        # per-thread size: "64K" records, "16MiB" bytes
    memory_limit: str | None = None  # bytes, e.g. "1GiB"
    start: str | None = None
    duration: float | None = None
    only: tuple[str, ...] = ()       # stalker: report only branches from or into these modules
    follow_children: bool = True    # trace every process the target starts
    hold_on_crash: bool = False     # run --gdb: leave the program stopped at a crash
    smc_check: bool = False         # stalker: run rewritten code as rewritten (--smc-check)
    trigger: Trigger | None = None   # snapshots on calls of a function (ring mode)


def parse_mode(mode: str) -> StoreMode:
    from .errors import UsageError

    try:
        return StoreMode[mode.upper()]
    except KeyError:
        raise UsageError(f"unknown mode {mode!r} (choose ring or stream)") from None


def store_config(config: RecordConfig, backend: Backend) -> StoreConfig:
    """Check sizes and build the store configuration (before anything runs)."""
    mode = parse_mode(config.mode)
    size = parse_size(config.buffer) if config.buffer is not None else None
    limit = parse_byte_size(config.memory_limit) if config.memory_limit is not None else None
    config_ = StoreConfig.from_size(size, mode, backend.encoding, memory_limit=limit)
    capacity = backend.store_capacity(config_.capacity_records, mode)
    if capacity != config_.capacity_records:
        config_ = dataclasses.replace(config_, capacity_records=capacity)
    return config_


#: How many threads compress a trace file's chunks (``0``: the consumer thread itself);
#: unset: :func:`compress_workers` decides. For measuring.
COMPRESS_THREADS_ENV = "BRANCHTRACE_COMPRESS_THREADS"


def compress_workers() -> int:
    """Threads that compress the chunks of a trace file being written, beside the
    thread that drains the store: the cores this process may run on less two (the
    program's and the drain's), at most 4; ``0`` (the drain compresses itself) on a
    machine of 1 or 2 cores. There a pool thread only competes with the drain for the
    one core the program leaves: on 2 cores, `bzip2 -9` of 12 MB in stream mode ran
    ~15% faster without it and no workload ran slower (docs/benchmarks.md, issue 15).
    With more cores the drain goes on while earlier chunks compress (zstd ~1 GB/s a
    core, the copy out of the store ~3 GB/s)."""
    value = os.environ.get(COMPRESS_THREADS_ENV, "")
    if value.isdigit():
        return min(int(value), 16)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 2))


#: How often (at most) a file being written gets the block table and modules so far.
LIVE_EVERY_NS = 500_000_000

#: Branches per thread that :func:`record` keeps in memory when it writes a file.
KEEP_WITH_FILE = 65536
#: The reason of the gap ``mark_dropped`` puts where branches were left out of memory.
DROPPED = "not kept in memory"


class RecordListener(Protocol):
    """How the engine tells a user interface what it is doing (the CLI's progress line).

    Called from the thread that drains the store: keep it quick, and never raise."""

    def progress(self, records: int, file_bytes: int) -> None:
        """``records`` raw records and ``file_bytes`` bytes are in the trace file so far."""
        ...


class Collector:
    """Where drained records go: the trace file (if any), and memory: all of them, or
    about the newest ``keep`` per thread. Never raises: a write error is kept in
    ``error`` (in stream mode the target would wait forever on a consumer that died)."""

    def __init__(self, writer: TraceWriter | None, keep: int | None,
                 listener: RecordListener | None, start_ns: int, backend: Backend,
                 argv: tuple[str, ...] = ()) -> None:
        self.writer, self.listener, self.start_ns = writer, listener, start_ns
        self.argv = argv                              # the header's: the target's argv
        # live(first_id) -> (block rows, modules): the backend hands over its block table
        # and module maps while the program runs, and the file gets them as it goes.
        self.live = backend.live
        # (a backend written before processes were recorded has no live_processes)
        self.live_processes: Callable[[], list[ProcessInfo]] = getattr(
            backend, "live_processes", list)
        self.blocks_written = 0                       # table rows already in the file
        # (pid, path, start, end); pid 0: the first process
        self.modules_written: set[tuple[int, str, int, int]] = set()
        self.processes_written: dict[int, ProcessInfo] = {}
        self.live_ns = 0                              # when live() was last asked
        # BLOCKID makes at most one branch per record: keep a margin of records
        self.keep = None if keep is None else 4 * keep + 64
        self.parts: dict[int, list[np.ndarray]] = defaultdict(list)
        self.held: dict[int, int] = defaultdict(int)      # records in parts
        self.seen: dict[int, int] = defaultdict(int)      # records taken in all
        self.times: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
        self.last_ns: dict[int, int] = {}
        self.error: OSError | None = None

    def take(self, tid: int, records: np.ndarray) -> None:
        now = time.time_ns()
        first = self.last_ns.get(tid, self.start_ns)
        self.last_ns[tid] = now
        if self.writer is not None and self.error is None:
            try:
                if now - self.live_ns >= LIVE_EVERY_NS or self._unknown_ids(records):
                    self.live_ns = now
                    rows, modules = self.live(self.blocks_written)
                    self.write_meta(rows, modules)
                    self.write_processes(self.live_processes())
                self.writer.write_chunk(tid, records, first, now)
            except OSError as err:
                self.error = err
            else:
                if self.listener is not None:
                    self.listener.progress(self.writer.records, self.writer.size)
        self.times[tid].append((self.seen[tid], len(records), first, now))
        self.seen[tid] += len(records)
        parts = self.parts[tid]
        parts.append(records)
        self.held[tid] += len(records)
        while self.keep is not None and len(parts) > 1 and self.held[tid] - len(parts[0]) >= self.keep:
            self.held[tid] -= len(parts.pop(0))

    def _unknown_ids(self, records: np.ndarray) -> bool:
        """Block ids in ``records`` the file has no table rows for yet: they are asked
        for before the chunk is written (~10 us for a chunk of 64K ids), not half a
        second later, so a file cut short decodes every whole chunk it has. (The target
        writes a block's row when it compiles the block, before the block runs.)"""
        return (records.dtype == RECORD_DTYPES[Encoding.BLOCKID] and len(records) > 0
                and int(records.max()) >= self.blocks_written)

    def write_meta(self, rows: np.ndarray | None, modules: list[ModuleMap]) -> None:
        """Write the block-table rows (from id ``blocks_written`` on) and the modules
        the file does not have yet. Raises OSError."""
        assert self.writer is not None
        if rows is not None and len(rows):
            self.writer.write_blocks(rows, self.blocks_written)
            self.blocks_written += len(rows)
        self.write_modules(modules, 0)

    def write_modules(self, modules: list[ModuleMap] | tuple[ModuleMap, ...], pid: int) -> None:
        """The modules of process ``pid`` (0: the first) the file does not have yet."""
        assert self.writer is not None
        for module in modules:
            key = (pid, module.path, module.start, module.end)
            if key not in self.modules_written:
                self.writer.write_module(module, pid)
                self.modules_written.add(key)

    def write_processes(self, processes: list[ProcessInfo]) -> None:
        """PROCESS records (and modules) of the processes that are new or changed, when
        there are several, or when the one process exec'd (its argv is no longer the
        header's); the first process's modules go without a pid."""
        assert self.writer is not None
        if len(processes) < 2 and not self.processes_written and (
                not processes or not processes[0].argv or processes[0].argv == self.argv):
            return
        for k, process in enumerate(processes):
            if self.processes_written.get(process.pid) != process:
                self.writer.write_process(process)
                self.processes_written[process.pid] = process
            self.write_modules(process.modules, 0 if k == 0 else process.pid)

    def dropped(self, tid: int) -> int:
        """Records of ``tid`` taken but no longer held in memory."""
        return self.seen[tid] - self.held[tid]


def record(target: Target, config: RecordConfig = RecordConfig(),
           on_start: Callable[[Backend, tuple[str, ...]], None] | None = None, *,
           output: str | os.PathLike[str] | None = None, keep: int | None = None,
           listener: RecordListener | None = None, chosen: Choice | None = None,
           mark_dropped: bool = False,
           snapshots: Snapshots | None = None) -> Trace:
    """Trace ``target`` until it ends (or we detach) and return the trace.

    ``on_start(backend, reasons)`` is called once the backend is chosen and the store
    configured, before the target runs: the caller can keep the backend to interrupt it.

    With ``output``, the trace is also written to that file (mode 0600, overwritten,
    never through a symbolic link): in stream mode while the target runs, in ring mode
    at the end; ``listener`` hears of the progress. ``keep`` bounds what the returned
    trace holds in memory to the newest ``keep`` branches per thread (the file has
    all of them; ``written``, ``lost`` and the gaps still describe the whole run). It
    defaults to all of them without ``output``, and to :data:`KEEP_WITH_FILE` with it:
    read the whole trace back with :func:`branchtrace.open`.

    ``chosen``: the backend ``select(config.backend)`` chose, when the caller chose it
    first (``branchtrace run`` does, to start the program early: the backend's
    ``start_early``); what that started is cancelled if recording fails before it.

    ``mark_dropped``: the branches ``keep`` leaves out of memory become, in the
    returned trace, a gap at the start of their thread (:data:`DROPPED`), are counted
    in its ``lost``, and a note says so (the Python API's :func:`branchtrace.record`).
    """
    choice = chosen if chosen is not None else select(config.backend)
    try:
        return _record(target, config, choice, on_start, output, keep, listener,
                       mark_dropped, snapshots)
    finally:
        choice.backend.cancel_early()


def _record(target: Target, config: RecordConfig, choice: Choice,
            on_start: Callable[[Backend, tuple[str, ...]], None] | None,
            output: str | os.PathLike[str] | None, keep: int | None,
            listener: RecordListener | None, mark_dropped: bool = False,
            snapshots: Snapshots | None = None) -> Trace:
    if output is not None and keep is None:
        keep = KEEP_WITH_FILE
    backend = choice.backend
    if output is not None:
        from .tracefile.format import FileHeader
        from .tracefile.writer import TraceWriter

    sconfig = store_config(config, backend)
    if config.trigger is not None and sconfig.mode != StoreMode.RING:
        raise UsageError("--trigger takes ring mode: a snapshot is the ring at one moment")
    start_ns = time.time_ns()
    writer = None
    if output is not None:
        header = FileHeader(int(sconfig.encoding), int(sconfig.mode), sconfig.record_size,
                            sconfig.capacity_records, sconfig.chunk_records, target.pid or 0,
                            start_ns, backend.name, f"branchtrace {__version__}", target.argv)
        writer = TraceWriter.create(output, header, workers=compress_workers(),
                                    coalesce=sconfig.mode == StoreMode.STREAM)
    sink = Collector(writer, keep, listener, start_ns, backend, target.argv)
    try:
        with Store.create(sconfig) as store:
            backend.prepare(store)  # before any thread of ours: the ptrace backend forks
            consumer = None
            on_snapshot = None
            if snapshots is not None and sconfig.mode == StoreMode.RING:
                snapshots.bind(store, backend, sconfig, target, start_ns)
                on_snapshot = snapshots.take
            try:
                if on_start is not None:
                    on_start(backend, choice.reasons)
                if sconfig.mode == StoreMode.STREAM:
                    consumer = StreamConsumer(store, sink.take)
                    consumer.start()
                result = backend.record(target, store, RecordOptions(
                    config.start, config.duration, config.only, config.follow_children,
                    config.trigger if on_snapshot is not None else None, on_snapshot,
                    hold_on_crash=config.hold_on_crash, smc_check=config.smc_check))
            finally:
                backend.release()
                if consumer is not None:
                    consumer.stop()
                if snapshots is not None:
                    snapshots.close()   # every snapshot delivered before the report
            status = store.status()
            if consumer is None:
                for tid in store.tids():
                    sink.take(tid, store.drain(tid, final=True))
    except BaseException:
        if writer is not None and writer.chunks == 0:
            writer.discard()       # nothing recorded: leave no file behind
        elif writer is not None:
            writer.close()         # readable, and says that it was cut short
        raise
    end_ns = time.time_ns()
    written = {t.tid: t.written for t in status.threads}
    lost = {t.tid: t.lost for t in status.threads}
    gaps = list(result.gaps)
    for gap in result.gaps:
        lost[gap.tid] = lost.get(gap.tid, 0) + gap.count
    for tid, n in lost.items():
        if n and not any(g.tid == tid for g in result.gaps):
            gaps.append(Gap(tid, 0, n, "ring buffer overwrote the oldest records"))
    pid = result.pid or (target.pid or 0)
    from .decode import concat, decode
    from .trace import Trace

    if writer is not None:
        waits = {t.tid: t.producer_waits for t in status.threads}
        finish_file(writer, sink, result, gaps, written, lost, waits, pid, end_ns)
    raw_dtype = RECORD_DTYPES[sconfig.encoding]
    threads, times, cut = {}, {}, {}
    for tid in result.threads:
        branches = decode(sconfig.encoding, concat(sink.parts.get(tid, []), raw_dtype),
                          result.blocks)
        cut[tid] = sink.dropped(tid)
        if keep is not None and len(branches) > keep:
            cut[tid] += len(branches) - keep
            branches = branches[len(branches) - keep:]
        threads[tid] = branches
        times[tid] = _chunk_times(sink.times.get(tid, []), cut[tid], len(branches))
    if any(cut.values()):
        gaps = [dataclasses.replace(g, index=max(0, g.index - cut.get(g.tid, 0))) for g in gaps]
    notes = list(result.notes)
    if mark_dropped and any(cut.values()):
        lost = dict(lost)
        where = f"the trace file {os.fspath(output)} has them" if output is not None \
            else "they were not kept"
        for tid, n in cut.items():
            if n:
                gaps.insert(0, Gap(tid, 0, n, DROPPED))
                lost[tid] = lost.get(tid, 0) + n
                notes.append(f"thread {tid}: only the newest {len(threads[tid])} branches "
                             f"are in memory, about {n} older records are not ({where})")
    return Trace(
        backend=backend.name, mode=sconfig.mode.name.lower(),
        argv=target.argv, pid=pid, exit=result.exit,
        modules=result.modules, threads=threads, gaps=gaps, written=written, lost=lost,
        notes=notes, start_time=start_ns / 10**9, end_time=end_ns / 10**9,
        producer_waits=sum(t.producer_waits for t in status.threads),
        capacity=sconfig.capacity_records, chunk_times=times,
        processes=list(result.processes),
    )


def _chunk_times(entries: list[tuple[int, int, int, int]], cut: int, n: int) -> np.ndarray:
    """The drain times of a thread's records, for the ``n`` branches kept after ``cut``."""
    rows = [(max(0, i - cut), min(i + c, cut + n) - max(i, cut), first, last)
            for i, c, first, last in entries if i + c > cut and i < cut + n]
    from .trace import CHUNK_TIMES_DTYPE

    return np.array(rows, dtype=CHUNK_TIMES_DTYPE)


def finish_file(writer: TraceWriter, sink: Collector, result: RunResult, gaps: list[Gap],
                 written: dict[int, int], lost: dict[int, int], waits: dict[int, int],
                 pid: int, end_ns: int) -> None:
    """Write what is known only at the end (modules, block table, gaps, notes, threads)
    and the END record; a write error becomes a :class:`StoreError`."""
    from .tracefile.format import ThreadInfo
    from .tracefile.writer import end_info

    try:
        if sink.error is not None:
            raise sink.error
        writer.flush_carried()         # every record in a chunk before the counts below
        blocks = result.blocks
        sink.write_meta(None if blocks is None else blocks[sink.blocks_written:], result.modules)
        sink.write_processes(result.processes)
        owner = {tid: p.pid for p in result.processes for tid in p.threads} \
            if len(result.processes) > 1 else {}
        for gap in gaps:
            writer.write_gap(gap)
        for note in result.notes:
            writer.write_note(note)
        stacks = {(p.pid, p.exit.stack.tid): p.exit.stack for p in result.processes
                  if p.exit.stack is not None}
        if result.exit.stack is not None:
            stacks[(pid, result.exit.stack.tid)] = result.exit.stack
        for (owner_pid, _), snapshot in stacks.items():
            writer.write_stack(owner_pid, snapshot)
        for tid in dict.fromkeys([*result.threads, *writer.kept]):
            kept = writer.kept.get(tid, 0)
            writer.write_thread(ThreadInfo(tid, kept, written.get(tid, kept), lost.get(tid, 0),
                                           waits.get(tid, 0), owner.get(tid, 0)))
        writer.finish(end_info(result.exit, pid, end_ns))
    except OSError as err:
        writer.close()
        raise StoreError(f"could not write the trace file {writer.path}: "
                         f"{err.strerror or err} (it holds what was written before)") from None

