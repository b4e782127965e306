"""Write trace files: :class:`TraceWriter` appends records while a recording runs.

The file is written in place, record by record, with one ``write`` per record: a file
whose writer is killed is cut after its last whole record and stays readable. Records
other than the header may come in any order; the END record comes last.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard

from .._version import __version__
from ..errors import UsageError
from ..model import ExitInfo, Gap, ModuleMap, ProcessInfo, StackSnapshot
from ..store import FROMTO_DTYPE, Encoding, StoreMode
from ..trace import Trace
from .chunkbody import chunk_record, pieces
from .stacks import encode_stack
from .blocksrec import BlocksHead, dtype_fields
from .format import (
    CHUNK_BYTES,
    MAGIC,
    PREAMBLE,
    VERSION,
    ChunkHead,
    EndInfo,
    FileHeader,
    GapInfo,
    MappingInfo,
    ModuleInfo,
    ProcessRecord,
    RecordType,
    ThreadInfo,
    frame,
)

#: zstd level of the chunks: 0.3-1.8 GB/s to write, 25-80x on branch records (measured).
#: Level 2 rather than 3: on the block ids of bzip2, cc1 and jq runs it compresses
#: 15-35% faster (CPU time) for files 0-3% larger. Level 1 rather than 2 since the ids
#: are stored as 16 bits: as fast (single thread, idle: 652 against 640 MB/s on
#: bzip2's ids, within 7% either way on python3, sqlite3, jq) for files 0-9% smaller;
#: paired stream runs the same speed (docs/benchmarks.md, issue 15).
LEVEL = 1

#: Longest a tail shorter than a chunk waits for more records of its thread (ns)
CARRY_NS = 20_000_000


def _why(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return f"cannot write the trace file {path}: it is a symbolic link (not following it)"
    return f"cannot write the trace file {path}: {err.strerror or err}"


def _open_private(path: Path) -> int:
    """Open ``path`` for a new trace: created mode 0600, or an existing regular file of
    ours, emptied and set to 0600. Refused: a symbolic link (O_NOFOLLOW), a file of
    another user or with other hard links (left untouched: nothing is truncated before
    these checks), and a file another branchtrace is writing (an exclusive ``flock``,
    held until the writer closes). Other files (/dev/null, a FIFO) are written as is."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        raise UsageError(_why(path, err)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_uid != os.geteuid():
                raise UsageError(f"cannot write the trace file {path}: it belongs to uid "
                                 f"{st.st_uid}, not overwriting another user's file")
            if st.st_nlink > 1:
                raise UsageError(f"cannot write the trace file {path}: it has "
                                 f"{st.st_nlink} hard links, not overwriting it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"cannot write the trace file {path}: another branchtrace "
                                 "is writing it") from None
            except OSError as err:   # a file system without locks: write unlocked
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            os.ftruncate(fd, 0)
            os.fchmod(fd, 0o600)   # an existing file keeps its mode otherwise
    except OSError as err:
        os.close(fd)
        raise UsageError(_why(path, err)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class TraceWriter:
    """An open trace file. Build with :meth:`create`; end with :meth:`finish` (which
    writes the END record) or :meth:`close` (which leaves the file cut short).

    :meth:`write_chunk` may be called from another thread (the stream consumer).

    With ``workers`` > 0, chunks are compressed on that many threads of a pool (zstd lets
    go of the GIL) while the caller goes on draining, and appended in the order they
    were given, at most ``2 * workers`` pieces behind; any other record, :meth:`finish`
    and :meth:`close` append the chunks still pending first, so the file's records keep
    the order of the calls.
    """

    def __init__(self, path: Path, fd: int, level: int = LEVEL, workers: int = 0,
                 coalesce: bool = False) -> None:
        self.path = path
        self.size = 0                     # bytes written
        self.records = 0                  # raw records written in chunks
        self.chunks = 0
        self.kept: dict[int, int] = defaultdict(int)   # raw records per thread
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._level = level
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=False)
        self._local = threading.local()   # each pool thread's own compressor
        self._pool = (ThreadPoolExecutor(workers, thread_name_prefix="branchtrace-zstd")
                      if workers > 0 else None)
        self._pending: deque[Future[bytes]] = deque()   # chunk frames, in file order
        self._max_pending = 2 * workers
        #: per thread: records shorter than a chunk, and when the first was produced
        self._carry: dict[int, tuple[np.ndarray, int]] = {}
        self._coalesce = coalesce

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: FileHeader,
               level: int = LEVEL, workers: int = 0, coalesce: bool = False) -> TraceWriter:
        """Create (or overwrite) ``path``, mode 0600, never through a symbolic link, and
        write the preamble and the HEADER record. Errors are :class:`UsageError`; what
        is refused is listed in :func:`_open_private`."""
        p = Path(path)
        fd = _open_private(p)
        writer = cls(p, fd, level, workers, coalesce)
        try:
            writer._append(PREAMBLE.pack(MAGIC, VERSION, 0)
                           + frame(RecordType.HEADER, header.encode()))
        except OSError as err:
            writer.close()
            raise UsageError(_why(p, err)) from None
        return writer

    # -- records ------------------------------------------------------------------------

    def write_chunk(self, tid: int, records: np.ndarray, first_ns: int, last_ns: int) -> None:
        """Append raw records of thread ``tid`` (oldest first), in chunks of
        :data:`CHUNK_BYTES`; ``first_ns``/``last_ns`` bound when they were produced.

        With ``coalesce``, a tail shorter than a chunk waits for the thread's next
        records (for at most :data:`CARRY_NS`, and never past another record of the file
        but a block table or a module): a stream consumer drains whatever whole buffer
        chunks are ready, and cutting each drain would make small chunks that compress
        worse (jq's trace was 46% larger with drains of 1-6 buffer chunks)."""
        step = max(1, CHUNK_BYTES // max(1, records.dtype.itemsize))
        if not self._coalesce:
            self._write_pieces(tid, pieces(None, records, step, len(records)), first_ns,
                               last_ns)
            return
        with self._lock:
            carry = self._carry.pop(tid, None)
        prefix = None
        if carry is not None:   # shorter than a chunk: only the first piece copies it
            prefix, first_ns = carry
        p = 0 if prefix is None else len(prefix)
        total = p + len(records)
        end = total - total % step
        if end < total and last_ns - first_ns < CARRY_NS:
            tail = (records[end - p:].copy() if end >= p or prefix is None
                    else np.concatenate((prefix[end:], records)))
            with self._lock:
                self._carry[tid] = (tail, first_ns)
        else:
            end = total
        self._write_pieces(tid, pieces(prefix, records, step, end), first_ns, last_ns)

    def _write_pieces(self, tid: int, pieces: Iterator[np.ndarray], first_ns: int,
                      last_ns: int) -> None:
        for piece in pieces:
            piece = np.ascontiguousarray(piece)
            with self._lock:
                head = ChunkHead(tid, len(piece), self.kept[tid], first_ns, last_ns)
                if self._pool is None:
                    self._append(chunk_record(self._compressor, head, piece))
                else:
                    self._append_done()
                    self._pending.append(self._pool.submit(self._chunk_frame, head, piece))
                self.kept[tid] += len(piece)
                self.records += len(piece)
                self.chunks += 1
        if self._pool is not None:
            with self._lock:
                self._append_done(wait_over=self._max_pending)

    def flush_carried(self) -> None:
        """Write every thread's tail held back by :meth:`write_chunk`."""
        with self._lock:
            carried, self._carry = self._carry, {}
        for tid, (records, first_ns) in carried.items():
            step = max(1, CHUNK_BYTES // max(1, records.dtype.itemsize))
            self._write_pieces(tid, pieces(None, records, step, len(records)), first_ns,
                               time.time_ns())

    def _chunk_frame(self, head: ChunkHead, piece: np.ndarray) -> bytes:
        """The CHUNK record of ``piece`` (on a pool thread, with its own compressor)."""
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(
                level=self._level, write_checksum=False)
        return chunk_record(compressor, head, piece)

    def _append_done(self, wait_over: int | None = None) -> None:
        """Append the pending chunks that are compressed, in order; with ``wait_over``,
        wait for the oldest ones until no more than that many are pending. (Holding
        the lock: the pool's threads never take it.)"""
        pending = self._pending
        while pending and (pending[0].done() or
                           (wait_over is not None and len(pending) > wait_over)):
            self._append(pending.popleft().result())

    def write_blocks(self, table: np.ndarray, first_id: int = 0) -> None:
        """Append the block table (rows ``first_id ...``), split over records."""
        fields = tuple(dtype_fields(table.dtype))
        step = max(1, CHUNK_BYTES // max(1, table.dtype.itemsize))
        for start in range(0, len(table), step):
            rows = np.ascontiguousarray(table[start:start + step])
            head = BlocksHead(first_id + start, len(rows), table.dtype.itemsize, fields)
            with self._lock:
                self._append_done(wait_over=0)
                body = self._compressor.compress(rows.view(np.uint8).data)
                self._append(frame(RecordType.BLOCKS, head.encode() + body))

    def write_module(self, module: ModuleMap, pid: int = 0) -> None:
        """A module of process ``pid`` (0: of the first process)."""
        maps = tuple(MappingInfo(m.start, m.end, m.offset, m.perms, m.path)
                     for m in module.mappings)
        info = ModuleInfo(module.start, module.end, module.bias, module.path,
                          module.build_id, maps, pid)
        self._record(RecordType.MODULE, info.encode())

    def write_process(self, process: ProcessInfo) -> None:
        """A PROCESS record (its modules are MODULE records with its pid)."""
        self._record(RecordType.PROCESS, process_record(process).encode())

    def write_stack(self, pid: int, snapshot: StackSnapshot) -> None:
        """A STACK record: the stack copy of a thread of ``pid`` that died of a signal."""
        self._record(RecordType.STACK, encode_stack(pid, snapshot))

    def write_gap(self, gap: Gap) -> None:
        self._record(RecordType.GAP, GapInfo(gap.tid, gap.index, gap.count, gap.reason).encode())

    def write_note(self, note: str) -> None:
        self._record(RecordType.NOTE, note.encode("utf-8", "surrogateescape"))

    def write_thread(self, info: ThreadInfo) -> None:
        self._record(RecordType.THREAD, info.encode())

    def finish(self, end: EndInfo) -> None:
        """Write the END record and close the file."""
        self._record(RecordType.END, end.encode())
        self.close()

    def close(self) -> None:
        """Close without an END record: readers will say the file was cut short. The
        chunks still being compressed are appended first, as long as writing works."""
        if self._fd is not None and self._carry:
            try:
                self.flush_carried()
            except OSError:
                pass
        with self._lock:
            try:
                if self._fd is not None:
                    self._append_done(wait_over=0)
            except OSError:
                pass                  # cut short where writing failed
            finally:
                self._pending.clear()
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def discard(self) -> None:
        """Close and remove the file (a recording that never started)."""
        self.close()
        self.path.unlink(missing_ok=True)

    # -- internals ----------------------------------------------------------------------

    def _record(self, rtype: RecordType, payload: bytes) -> None:
        if rtype != RecordType.MODULE and self._carry:
            try:
                self.flush_carried()      # a thread's chunks come before what follows them
            except OSError:
                pass                      # cut short here: the record below says so again
        with self._lock:
            self._append_done(wait_over=0)   # the chunks given before it come first
            self._append(frame(rtype, payload))

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError(errno.EBADF, "the trace file is closed")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)


def process_record(p: ProcessInfo) -> ProcessRecord:
    e = p.exit
    return ProcessRecord(p.pid, p.ppid, p.start_ns, p.end_ns, e.status, e.code, e.signal,
                         e.fault_address, e.fault_pc, e.tid, e.core_dumped, tuple(p.argv),
                         tuple(p.threads))


def end_info(exit: ExitInfo, pid: int, end_ns: int) -> EndInfo:
    return EndInfo(end_ns, pid, exit.status, exit.code, exit.signal, exit.fault_address,
                   exit.fault_pc, exit.tid, exit.core_dumped)


def save(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write an in-memory trace (e.g. one built in a test) to ``path``, FROMTO-encoded."""
    mode = StoreMode.STREAM if trace.mode == "stream" else StoreMode.RING
    start_ns, end_ns = _ns(trace.start_time), _ns(trace.end_time)
    header = FileHeader(int(Encoding.FROMTO), int(mode), FROMTO_DTYPE.itemsize, trace.capacity,
                        0, trace.pid, start_ns, trace.backend, _writer_name(), tuple(trace.argv))
    writer = TraceWriter.create(path, header)
    try:
        for tid, branches in trace.threads.items():
            raw = np.zeros(len(branches), FROMTO_DTYPE)
            for name in ("from_ip", "to_ip", "kind"):
                raw[name] = branches[name]
            for lo, hi, first, last in _spans(trace, tid, start_ns, end_ns):
                writer.write_chunk(tid, raw[lo:hi], first, last)
        several = len(trace.processes) > 1
        if several:
            for process in trace.processes:
                writer.write_process(process)
                for module in process.modules:
                    writer.write_module(module, process.pid)
        else:
            for module in trace.modules:
                writer.write_module(module)
        for gap in trace.gaps:
            writer.write_gap(gap)
        for note in trace.notes:
            writer.write_note(note)
        for tid, branches in trace.threads.items():
            writer.write_thread(ThreadInfo(tid, len(branches),
                                           trace.written.get(tid, len(branches)),
                                           trace.lost.get(tid, 0),
                                           pid=trace.process_of(tid).pid if several else 0))
        writer.finish(end_info(trace.exit, trace.pid, end_ns))
    except BaseException:
        writer.close()
        raise


def _ns(seconds: float) -> int:
    """Seconds since the epoch as ns, without the float product's rounding."""
    whole = int(seconds)
    return whole * 10**9 + round((seconds - whole) * 1e9)


def _spans(trace: Trace, tid: int, start_ns: int, end_ns: int) -> list[tuple[int, int, int, int]]:
    """The thread's branches cut as its chunk times say (when they tile it), else whole."""
    n = len(trace.threads[tid])
    times = trace.chunk_times.get(tid)
    if times is not None and len(times) and int(times["index"][0]) == 0 \
            and np.array_equal(times["index"][1:], (times["index"] + times["count"])[:-1]) \
            and int(times["index"][-1] + times["count"][-1]) == n:
        return [(int(t["index"]), int(t["index"] + t["count"]), int(t["first_ns"]),
                 int(t["last_ns"])) for t in times]
    return [(0, n, start_ns, end_ns)]


def _writer_name() -> str:
    return f"branchtrace {__version__}"
