"""decode/runs.py, analysis/coverage_counts.py, tracefile.counts.count_runs: coverage
from counted runs and edges equals :func:`compute` over the decoded branches.

The block table describes test_coverage.py's small program (read from memory there),
with the odd entries a real table has: a block translated twice, a signal handler's
block, a block outside ``--only``, a hooked block, an entry never completed, ids past
the table. Id sequences are the program's own loop and random walks over every entry;
the reference is ``compute`` of the branches ``decode_blocks`` gives, with the gaps
where the ids were cut or where the file says records were lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from branchtrace.analysis.coverage import Coverage, compute
from branchtrace.analysis.coverage_counts import compute_counted
from branchtrace.analysis.coverage_union import compute_all
from branchtrace.decode import decode_blocks, jit
from branchtrace.decode.run_counter import RunCounter, combine
from branchtrace.decode.runs import RunCounts
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap
from branchtrace.store.blocks import BLOCK_DTYPE, FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID
from branchtrace.tracefile import open_trace, scan, to_trace
from branchtrace.tracefile import counts as file_counts
from branchtrace.tracefile.format import FRAME, RecordType
from test_coverage import CODE, MemoryReader, make_trace
from test_tracefile import blockid_file, records

COMPILED = [False] + ([True] if jit.enabled() else [])
K = BranchKind
V = FLAG_VALID
# start, last, end, kind, flags (offsets from CODE; see test_coverage.PROGRAM)
ROWS = [(0x00, 0x05, 0x0a, K.CALL, V),            # 0 mov; call
        (0x20, 0x21, 0x22, K.RETURN, V),          # 1 nop; ret
        (0x0a, 0x10, 0x12, K.COND, V),            # 2 add; cmp; jl
        (0x05, 0x05, 0x0a, K.CALL, V),            # 3 call (the loop enters here)
        (0x12, 0x19, 0x1b, K.SYSCALL, V),         # 4 mov; mov; syscall
        (0x0a, 0x10, 0x12, K.COND, V),            # 5 = 2, translated again
        (0x20, 0x21, 0x22, K.RETURN, V | FLAG_ASYNC),     # 6 a signal handler
        (0x14, 0x19, 0x1b, K.SYSCALL, V | FLAG_FOREIGN),  # 7 outside --only
        (0x00, 0x05, 0x0a, K.CALL, V | FLAG_HOOKED),      # 8 hooked
        (0x12, 0x19, 0x1b, K.SYSCALL, 0)]                 # 9 never completed
LOOP = [0, 1, 2, 3, 1, 2, 3, 1, 2, 4]


def table() -> np.ndarray:
    out = np.zeros(len(ROWS), BLOCK_DTYPE)
    for i, (s, la, e, k, f) in enumerate(ROWS):
        out[i] = (CODE + s, CODE + la, CODE + e, int(k), f, 1, 0)
    return out


def walk(seed: int, n: int = 2000) -> np.ndarray:
    """Ids: stretches of the loop, and random ids (past the table too)."""
    rng = np.random.default_rng(seed)
    parts = []
    while sum(map(len, parts)) < n:
        if rng.random() < 0.5:
            parts.append(np.array(LOOP * int(rng.integers(1, 4)), np.uint32))
        else:
            n_ids = int(rng.integers(1, 30))
            parts.append(rng.integers(0, len(ROWS) + 2, n_ids).astype(np.uint32))
    return np.concatenate(parts)


def same(got: Coverage, want: Coverage) -> None:
    for name in ("branches", "runs", "dropped_runs", "unknown_lengths", "notes", "modules"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("blocks", "edges"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (name, a, b)


def reference(segments: list[np.ndarray], heads: list[int], exit: ExitInfo,
              first_ips: dict[int, int] | None = None) -> Coverage:
    """``compute`` of the branches of ``segments`` (cut apart: a gap between them) with
    gaps before the branches ``heads`` too."""
    parts = [decode_blocks(s, table()) for s in segments]
    cuts = np.cumsum([0] + [len(p) for p in parts])[:-1].tolist()
    gaps = [Gap(1, at, 1, "cut") for at in cuts[1:]] + [Gap(1, at, 2, "lost") for at in heads]
    arr = np.concatenate(parts) if parts else np.zeros(0, BRANCH_DTYPE)
    trace = make_trace({1: arr}, exit, gaps)
    return compute(trace, MemoryReader(trace), first_ips=first_ips)


def counted(counts: RunCounts, exit: ExitInfo, first_ips: dict[int, int] | None = None
            ) -> Coverage:
    trace = make_trace({1: np.zeros(0, BRANCH_DTYPE)}, exit)
    return compute_counted(trace, lambda tid: counts, MemoryReader(trace), first_ips=first_ips)


EXITS = [ExitInfo("exited", code=0),
         ExitInfo("signaled", signal=11, fault_pc=CODE + 0x17, tid=1), ExitInfo("detached")]


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("seed", range(6))
def test_counted_block_ids_give_the_coverage_of_their_branches(seed: int,
                                                              compiled: bool) -> None:
    ids = np.array(LOOP * 5, np.uint32) if seed == 0 else walk(seed)
    rng = np.random.default_rng(seed)
    exit = EXITS[seed % len(EXITS)]
    counter = RunCounter(table(), (), compiled)
    assert (counter.kernel is not None) == compiled
    for piece in np.array_split(ids, rng.integers(1, 20)):      # pieces: pairs across them
        counter.feed(piece)
    got = counter.result()
    same(counted(got, exit), reference([ids], [], exit))
    assert got.branches == len(decode_blocks(ids, table()))
    first = {1: CODE + 0x00}
    same(counted(got, exit, first), reference([ids], [], exit, first))


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("seed", range(1, 6))
def test_cuts_and_gaps_of_the_file_break_the_runs_there(seed: int, compiled: bool) -> None:
    ids = walk(seed, 3000)
    rng = np.random.default_rng(seed)
    exit = EXITS[seed % len(EXITS)]
    bounds = sorted(set(rng.integers(0, len(ids), 4).tolist()) | {0, len(ids)})
    segments = [ids[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    n = sum(len(decode_blocks(s, table())) for s in segments)
    heads = set(rng.integers(0, n + 1, 5).tolist())
    heads |= ({0} if seed % 2 else set()) | ({n} if seed % 3 == 0 else set())
    counter = RunCounter(table(), sorted(heads), compiled)
    for k, segment in enumerate(segments):
        if k:
            counter.cut()                    # a hole, or a chunk that did not decompress
        for piece in np.array_split(segment, 3):
            counter.feed(piece)
    got = counter.result()
    first = {1: CODE + 0x05}
    same(counted(got, exit), reference(segments, sorted(heads), exit))
    same(counted(got, exit, first), reference(segments, sorted(heads), exit, first))


@pytest.mark.skipif(not jit.enabled(), reason="stretches are counted with numba only")
@pytest.mark.parametrize("seed", range(1, 5))
def test_stretches_counted_apart_combine_into_the_whole(seed: int) -> None:
    ids = walk(seed, 3000)
    rng = np.random.default_rng(seed)
    whole = RunCounter(table())
    whole.feed(ids)
    bounds = sorted(set(rng.integers(1, len(ids), 5).tolist()) | {0, len(ids)})
    bounds += [len(ids)] * (seed % 2)                        # an empty stretch at the end
    counters = [RunCounter(table())] + [RunCounter(table(), after=int(ids[lo - 1]))
                                        for lo in bounds[1:-1]]
    for c, lo, hi in zip(counters, bounds, bounds[1:]):
        c.feed(ids[lo:hi])
    a, b = combine(counters), whole.result()
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        assert (x.tobytes() == y.tobytes()) if isinstance(x, np.ndarray) else x == y, name


def _file_table() -> np.ndarray:
    return table()[:5]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("corrupt", [None, 1, 4])
def test_a_file_counted_gives_the_coverage_of_its_branches(
        tmp_path: Path, workers: int, corrupt: int | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads, three chunks each (one with a gap of the file), a chunk damaged."""
    seqs = {4242: np.tile(np.array(LOOP, "<u4"), 3001),
            4243: np.tile(np.array(LOOP, "<u4"), 71)}
    path = tmp_path / "b.btrace"
    blockid_file(path, _file_table(), seqs)
    if corrupt is not None:
        offset, length = [(o, n) for o, t, n in records(path) if t == RecordType.CHUNK][corrupt]
        data = bytearray(path.read_bytes())
        data[offset + FRAME.size + length // 2] ^= 0x40
        path.write_bytes(bytes(data))
    monkeypatch.setattr(file_counts, "PARALLEL_MIN_IDS", 1)
    tf = scan(path)
    trace = to_trace(tf, decode=False)
    got = compute_all(trace, counts=lambda tid: file_counts.count_runs(tf, tid, workers=workers))
    want = compute_all(open_trace(path))
    same(got, want)
    assert got.branches > 10_000


def test_from_to_files_are_counted_from_their_branches() -> None:
    golden = Path(__file__).resolve().parents[1] / "golden"
    for name in ("fib.btrace", "fib-crash.btrace"):
        tf = scan(golden / name)
        got = compute_all(to_trace(tf, decode=False),
                          counts=lambda tid: file_counts.count_runs(tf, tid))
        same(got, compute_all(open_trace(golden / name)))
