"""A thread's chunks decompressed into one buffer, in parallel (zstd and numpy let go
of the GIL), without letting forged sizes make the reader allocate gigabytes
(tracefile/load.py is the caller). Narrowed block ids (chunkbody.py) are widened on the
way."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zstandard

from ..model import BRANCH_DTYPE, BranchKind
from ..store import RECORD_DTYPES, Encoding
from .chunkbody import open_records, read_full, stored_size
from .holes import Hole
from .reader import Chunk

#: A thread's chunks are decompressed into one buffer sized up front from the sizes
#: their headers declare; forged zstd frame headers must not make the reader allocate
#: gigabytes. When every chunk declares at most this many times its compressed bytes
#: (plus TRUSTED_BYTES), the buffer is allocated: at most 8 x the file. Otherwise (real
#: traces compress 25-80:1) the buffer is reserved, not committed (bigarrays.reserve): only
#: what the chunks really hold becomes resident, and a chunk that holds less than it claims
#: becomes a gap. Where the system will not reserve (strict overcommit), such chunks are
#: first decompressed into a small scratch buffer to check their size (verified).
TRUSTED_RATIO = 8
TRUSTED_BYTES = 64 << 10
BATCH_BYTES = 1 << 20
SCRATCH_BYTES = 1 << 20
PROBE_BYTES = 1 << 20
LAST_KIND = max(BranchKind)


def in_batches(pool: ThreadPoolExecutor, job: Callable[[int], bool], chunks: list[Chunk],
               record_size: int) -> list[bool]:
    """``job(k)`` for every chunk index, on the pool in batches of about 1 MiB of records:
    one task per tiny chunk would cost more memory (and time) than the chunk itself."""
    batches, begin, size = [], 0, 0
    for k, c in enumerate(chunks):
        size += c.head.count * record_size
        if size >= BATCH_BYTES or k - begin >= 255:
            batches.append(range(begin, k + 1))
            begin, size = k + 1, 0
    if begin < len(chunks):
        batches.append(range(begin, len(chunks)))

    def run(batch: range) -> list[bool]:
        return [job(k) for k in batch]

    parts = pool.map(run, batches) if len(batches) > 1 else map(run, batches)
    return [good for part in parts for good in part]


def trusted(c: Chunk, record_size: int) -> bool:
    """Whether the chunk's declared size is in proportion to its compressed bytes."""
    return c.head.count * record_size <= TRUSTED_RATIO * c.size + TRUSTED_BYTES


def verified(chunks: list[Chunk], holes: list[Hole], record_size: int,
             pool: ThreadPoolExecutor, local: threading.local
             ) -> tuple[list[Chunk], list[Hole]]:
    """The chunks, without those whose size is out of proportion to their compressed
    bytes and that do not decompress to it; those join the holes."""
    def job(c: Chunk) -> bool:
        return c.head.count * record_size <= TRUSTED_RATIO * c.size + TRUSTED_BYTES \
            or probe(local, c.body, stored_size(c.head.count, record_size, c.flags))

    if all(c.head.count * record_size <= TRUSTED_RATIO * c.size + TRUSTED_BYTES
           for c in chunks):
        return chunks, holes
    ok = in_batches(pool, lambda k: job(chunks[k]), chunks, record_size)
    bad = [Hole(c.head.first_index, c.head.count) for c, good in zip(chunks, ok) if not good]
    good_chunks = [c for c, good in zip(chunks, ok) if good]
    return good_chunks, sorted(holes + bad, key=lambda h: h.start)


def probe(local: threading.local, body: bytes, size: int) -> bool:
    """Whether the zstd frame at the start of ``body`` decompresses to exactly ``size``
    bytes, using a fixed scratch buffer (nothing of that size is allocated)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(local, "dctx", None)
    if dctx is None:
        dctx = local.dctx = zstandard.ZstdDecompressor()
    probe: bytearray | None = getattr(local, "probe", None)
    if probe is None:
        probe = local.probe = bytearray(PROBE_BYTES)
    view = memoryview(probe)
    try:
        with dctx.stream_reader(body, read_across_frames=False) as reader:
            got = 0
            while got < size:
                n = reader.readinto(view[:min(len(view), size - got)])
                if not n:
                    return False
                got += n
            return reader.readinto(view[:1]) == 0
    except zstandard.ZstdError:
        return False


def fill(local: threading.local, body: bytes, out: np.ndarray,
         encoding: Encoding | None, seen: list[int] | None = None,
         narrow: bool = False) -> bool:
    """Decompress one chunk into ``out`` (decoded when ``encoding`` is given, else raw);
    False when the chunk is corrupt. Records to decode pass through a scratch buffer of
    at most SCRATCH_BYTES, whatever size the chunk declares; kinds no
    :class:`BranchKind` names are counted there, while it is in the cache, into ``seen``
    (then the caller finds and renames them: rare, a damaged or newer file). ``narrow``:
    the chunk holds 16-bit block ids (chunkbody.NARROW), widened into ``out``."""
    dctx: zstandard.ZstdDecompressor | None = getattr(local, "dctx", None)
    if dctx is None:
        dctx = local.dctx = zstandard.ZstdDecompressor()
    if encoding is None:
        return decompress_into(dctx, body, out.view(np.uint8).data, narrow)
    raw_dtype = RECORD_DTYPES[encoding]
    step = max(1, SCRATCH_BYTES // raw_dtype.itemsize)
    need = min(step, len(out)) * raw_dtype.itemsize
    scratch: bytearray | None = getattr(local, "scratch", None)
    if scratch is None or len(scratch) < need:
        scratch = local.scratch = bytearray(need)
    try:
        with dctx.stream_reader(body, read_across_frames=False) as reader:
            for at in range(0, len(out), step):
                n = min(step, len(out) - at)
                view = memoryview(scratch)[:n * raw_dtype.itemsize]
                if not read_full(reader, view):
                    return False
                raw = np.frombuffer(view, raw_dtype)
                part = out[at:at + n]
                for name in BRANCH_DTYPE.names or ():
                    part[name] = raw[name]   # field by field: 10x faster than a struct copy
                if seen is not None and "kind" in (raw_dtype.names or ()):
                    strange = int(np.count_nonzero(raw["kind"] > LAST_KIND))
                    if strange:
                        seen.append(strange)
        return True
    except zstandard.ZstdError:
        return False


def decompress_into(dctx: zstandard.ZstdDecompressor, body: bytes, target: memoryview,
                    narrow: bool = False) -> bool:
    """Decompress the zstd frame at the start of ``body`` into exactly ``target`` (its
    declared content size, checked when the file was scanned; bytes after the frame are
    for future fields); narrowed ids are widened on the way."""
    try:
        with open_records(dctx, body, narrow) as reader:
            return read_full(reader, target)
    except zstandard.ZstdError:
        return False
