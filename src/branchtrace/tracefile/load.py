"""Turn a scanned trace file into a :class:`~branchtrace.trace.Trace`: decompress and
decode every thread's chunks into canonical branch arrays.

Chunks are decompressed in parallel (chunkfill.py; zstd and numpy let go of the GIL).
FROMTO records decode one by one, so each chunk is decoded straight into its slice of
the thread's array; other encodings (BLOCKID pairs consecutive records) are decoded per run of
consecutive chunks. Long block-id threads, when numba is installed, are decoded chunk
by chunk instead (decode/fused.py: no buffer of all ids, exact chunk times); this module's
path stays for everything else, and where memory cannot be reserved. A chunk that is
missing or does not decompress becomes a gap with the reason ``"corrupt chunk"``;
nothing here raises for damaged data.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import progress
from ..bigarrays import reserve
from ..decode import concat, decode, fused
from ..errors import TraceFormatError
from ..model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, Mapping, ModuleMap, ProcessInfo
from ..store import RECORD_DTYPES, Encoding, StoreMode
from ..trace import CHUNK_TIMES_DTYPE, Trace
from . import chunkfill
from .format import GapInfo, ModuleInfo, ProcessRecord
from .holes import Hole, Shifter, add_gap, items_of, select
from .stacks import with_stack
from .reader import Chunk, TraceFile, scan

CORRUPT = "corrupt chunk"


def open_trace(path: str | os.PathLike[str]) -> Trace:
    """Read the trace file at ``path``. Raises :class:`TraceFormatError` (one line) when
    the file cannot be used at all; a damaged or cut-short file gives what it holds, with
    gaps and notes saying what is missing (and ``truncated`` set when cut short)."""
    return to_trace(scan(path))


def to_trace(tf: TraceFile, decode: bool = True) -> Trace:
    """The :class:`Trace` of a scanned file. ``decode=False``: everything but the
    branches (every thread's array is empty; the missing chunks are gaps at index 0),
    for readers that go over the branches themselves (tracefile/counts.py, stream.py)."""
    h = tf.header
    info = {t.tid: t for t in tf.threads}
    order = list(dict.fromkeys([t.tid for t in tf.threads] + list(tf.chunks)))
    threads: dict[int, np.ndarray] = {}
    times: dict[int, np.ndarray] = {}
    gaps: list[Gap] = []
    written: dict[int, int] = {}
    lost: dict[int, int] = {}
    notes = list(tf.notes)
    gaps_of: dict[int, list[GapInfo]] = defaultdict(list)
    for g in tf.gaps:
        gaps_of[g.tid].append(g)
    local = threading.local()        # each worker's decompressor and scratch buffer
    kinds_known = _table_kinds_known(tf)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for tid in order:
            t = info.get(tid)
            chunks, holes = select(tf.chunks.get(tid, []), t.kept if t else None)
            seen: list[int] = []       # from/to chunks holding kinds we do not know
            if decode:
                array, placed, chunk_times, why = _decode_thread(tf, chunks, holes, pool,
                                                                 local, seen)
            else:
                array, placed, why = np.zeros(0, BRANCH_DTYPE), [(x, 0) for x in holes], ""
                chunk_times = np.zeros(0, CHUNK_TIMES_DTYPE)
            if why:
                notes.append(f"thread {tid}: {why}")
            check = seen if tf.encoding == Encoding.FROMTO else not kinds_known
            strange = _unknown_kinds(array) if check else 0
            if strange:
                notes.append(f"thread {tid}: {strange} branches of a kind this branchtrace "
                             f"does not know are shown as 'other'")
            threads[tid], times[tid] = array, chunk_times
            shift = Shifter([hole for hole, _ in placed])
            for g in gaps_of.get(tid, ()):
                gaps.append(Gap(tid, min(shift(g.index), len(array)), g.count, g.reason))
            gaps.extend(Gap(tid, index, hole.count, CORRUPT) for hole, index in placed)
            missing = shift.total
            kept = sum(c.head.count for c in chunks)
            # without a THREAD record: the records the chunks and the holes between them
            # span (a chunk that does not decompress is counted once, as a hole)
            written[tid] = t.written if t else kept + sum(hole.count for hole in holes)
            lost[tid] = (t.lost if t else 0) + missing
    for g in tf.gaps:
        if g.tid not in threads:
            gaps.append(Gap(g.tid, g.index, g.count, g.reason))
    end = tf.end
    pid = end.pid if end else h.pid or next(iter(threads), 0)
    if end is None:
        exit = ExitInfo("unknown")
    else:
        exit = with_stack(ExitInfo(end.status, end.code, end.signal, end.fault_address,
                                   end.fault_pc, end.tid, end.core_dumped), end.pid, tf.stacks)
    last_ns = max((c.head.last_ns for cs in tf.chunks.values() for c in cs), default=h.start_ns)
    mode = {StoreMode.RING: "ring", StoreMode.STREAM: "stream"}.get(StoreMode(h.mode), "") \
        if h.mode in (1, 2) else f"mode {h.mode}"
    processes = _processes(tf, pid, exit, list(threads))
    if processes:
        pid = processes[0].pid
    modules = list(processes[0].modules) if processes else [_module(m) for m in tf.modules]
    return Trace(
        backend=h.backend, mode=mode, argv=h.argv or (processes[0].argv if processes else ()),
        pid=pid, exit=exit, modules=modules, threads=threads, gaps=gaps, processes=processes,
        written=written, lost=lost, notes=notes + tf.problems,
        start_time=h.start_ns / 10**9, end_time=(end.end_ns if end else last_ns) / 10**9,
        producer_waits=sum(t.producer_waits for t in tf.threads), capacity=h.capacity,
        truncated=tf.truncated, chunk_times=times,
    )


def processes_of(tf: TraceFile) -> list[ProcessInfo]:
    """The processes a scanned file records, without decoding its branches ([] for a
    file of one process with no PROCESS record)."""
    from .stream import thread_order

    tids = thread_order(tf)
    end = tf.end
    pid = end.pid if end else tf.header.pid or (tids[0] if tids else 0)
    exit = ExitInfo("unknown") if end is None else with_stack(ExitInfo(
        end.status, end.code, end.signal, end.fault_address, end.fault_pc, end.tid,
        end.core_dumped), end.pid, tf.stacks)
    return _processes(tf, pid, exit, tids)


def _processes(tf: TraceFile, pid: int, exit: ExitInfo, tids: list[int]) -> list[ProcessInfo]:
    """The processes of a file with PROCESS records ([] without: one process, which the
    Trace makes from its other fields). The first process is END's pid (else the first
    record's); its exit is END's when there is one. MODULE and THREAD records without
    a pid belong to the first process, as do threads no record places."""
    if not tf.processes:
        return []
    records = list(tf.processes.values())
    first = tf.processes.get(pid, records[0]) if tf.end is not None else records[0]
    records.remove(first)
    records.insert(0, first)
    first_pid = first.pid
    modules: dict[int, list[ModuleMap]] = defaultdict(list)
    for m in tf.modules:
        modules[m.pid or first_pid].append(_module(m))
    threads: dict[int, list[int]] = defaultdict(list)
    placed: set[int] = set()
    for r in records:
        for tid in r.threads:
            if tid not in placed:
                threads[r.pid].append(tid)
                placed.add(tid)
    for t in tf.threads:
        if t.tid not in placed and (t.pid in tf.processes or t.pid == 0):
            threads[t.pid or first_pid].append(t.tid)
            placed.add(t.tid)
    for tid in tids:
        if tid not in placed:
            threads[first_pid].append(tid)
    out = []
    for r in records:
        ex = exit if r is first and tf.end is not None else \
            with_stack(_exit(r, tf.end is None), r.pid, tf.stacks)
        out.append(ProcessInfo(r.pid, r.ppid, r.argv or (tf.header.argv if r is first else ()),
                               ex, tuple(modules.get(r.pid, ())), tuple(threads[r.pid]),
                               r.start_ns, r.end_ns))
    return out


def _exit(r: ProcessRecord, cut: bool) -> ExitInfo:
    if cut and r.status == "running":    # not ended when the file was cut short
        return ExitInfo("unknown")
    return ExitInfo(r.status, r.code, r.signal, r.fault_address, r.fault_pc, r.tid,
                    r.core_dumped)


def _module(m: ModuleInfo) -> ModuleMap:
    return ModuleMap(m.path, m.start, m.end, m.bias, m.build_id,
                     tuple(Mapping(x.start, x.end, x.perms, x.offset, x.path) for x in m.mappings))


def _table_kinds_known(tf: TraceFile) -> bool:
    """Whether block ids can only decode to kinds :class:`BranchKind` names: those of
    the block table, or INTERRUPT (then no branch needs checking)."""
    if tf.encoding != Encoding.BLOCKID or tf.blocks is None:
        return False
    return len(tf.blocks) == 0 or int(tf.blocks["kind"].max()) <= max(BranchKind)


def _unknown_kinds(branches: np.ndarray) -> int:
    """Make branch kinds no :class:`BranchKind` names (a damaged or newer file) OTHER,
    so that no report meets a value it cannot name; how many there were."""
    kinds = branches["kind"]
    bad = kinds > max(BranchKind)
    n = int(np.count_nonzero(bad))
    if n:
        kinds[bad] = BranchKind.OTHER
    return n


def _decode_thread(tf: TraceFile, chunks: list[Chunk], holes: list[Hole],
                   pool: ThreadPoolExecutor, local: threading.local, seen: list[int]
                   ) -> tuple[np.ndarray, list[tuple[Hole, int]], np.ndarray, str]:
    """The branches of one thread, its holes with their index in the branches, its
    chunk times, and why decoding failed (if it did). From/to chunks with kinds no
    :class:`BranchKind` names add their count of those to ``seen``."""
    if fused.usable(tf, chunks):
        done = fused.decode(tf, chunks, pool, local)
        if done is not None:
            return _placed(chunks, holes, *done)
    encoding = tf.encoding
    raw_dtype = RECORD_DTYPES[encoding]
    per_chunk = encoding == Encoding.FROMTO     # records decode independently
    dtype = BRANCH_DTYPE if per_chunk else raw_dtype
    buffer = None
    if not all(chunkfill.trusted(c, raw_dtype.itemsize) for c in chunks):
        # Sizes out of proportion to the compressed bytes (most chunks of a real trace
        # compress 25-80:1): decompress them straight into reserved memory, which only
        # what they really hold makes resident; a forged size costs address space.
        buffer = reserve(sum(c.head.count for c in chunks), dtype)
    if buffer is None:
        chunks, holes = chunkfill.verified(chunks, holes, raw_dtype.itemsize, pool, local)
        total = sum(c.head.count for c in chunks)
        try:
            buffer = np.empty(total, dtype)
        except MemoryError:
            raise TraceFormatError(
                f"{tf.path}: not enough memory to decode its {total} records") from None
    slots, at = [], 0
    for c in chunks:
        slots.append((at, at + c.head.count))
        at += c.head.count

    def job(k: int) -> bool:
        a, b = slots[k]
        progress.advance(chunks[k].size)
        return chunkfill.fill(local, chunks[k].body, buffer[a:b],
                              encoding if per_chunk else None, seen, chunks[k].narrow)

    ok = chunkfill.in_batches(pool, job, chunks, raw_dtype.itemsize)
    items = items_of(chunks, holes, ok)
    pieces: list[np.ndarray] = []
    times: list[tuple[int, int, int, int]] = []
    gaps: list[tuple[Hole, int]] = []
    n, why, run = 0, "", []
    for item in [*items, None]:
        if isinstance(item, int):
            run.append(item)
            continue
        if run:
            part, err = _decode_run(tf, buffer[slots[run[0]][0]:slots[run[-1]][1]], per_chunk,
                                     pool)
            why = why or err
            raw_n = sum(chunks[k].head.count for k in run)
            at_raw, scale = 0, len(part) / raw_n
            for k in run:
                head = chunks[k].head
                lo, hi = round(at_raw * scale), round((at_raw + head.count) * scale)
                times.append((n + lo, hi - lo, head.first_ns, head.last_ns))
                at_raw += head.count
            pieces.append(part)
            n += len(part)
            run = []
        if item is not None:
            add_gap(gaps, item, n)
    array = pieces[0] if len(pieces) == 1 else concat(pieces, BRANCH_DTYPE)
    return array, gaps, np.array(times, dtype=CHUNK_TIMES_DTYPE), why


def _placed(chunks: list[Chunk], holes: list[Hole], array: np.ndarray, spans: fused.Spans
            ) -> tuple[np.ndarray, list[tuple[Hole, int]], np.ndarray, str]:
    """What _decode_thread returns, for branches decoded chunk by chunk (decode/fused.py):
    each chunk's times cover exactly its branches."""
    items = items_of(chunks, holes, [span is not None for span in spans])
    times: list[tuple[int, int, int, int]] = []
    gaps: list[tuple[Hole, int]] = []
    n = 0
    for item in items:
        if isinstance(item, Hole):
            add_gap(gaps, item, n)
            continue
        span, head = spans[item], chunks[item].head
        assert span is not None
        times.append((span[0], span[1], head.first_ns, head.last_ns))
        n = span[0] + span[1]
    return array, gaps, np.array(times, dtype=CHUNK_TIMES_DTYPE), ""


def _decode_run(tf: TraceFile, part: np.ndarray, per_chunk: bool,
                pool: ThreadPoolExecutor) -> tuple[np.ndarray, str]:
    """The branches of a run of consecutive good chunks (adjacent in the buffer; already
    decoded when ``per_chunk``)."""
    if per_chunk:
        return part, ""
    try:
        return decode(tf.encoding, part, tf.blocks, pool), ""
    except (TraceFormatError, ValueError, IndexError, TypeError) as err:
        return np.zeros(0, BRANCH_DTYPE), f"records could not be decoded: {err}"
