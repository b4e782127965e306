"""The trace format is enough to write a reader (issue 16): tests/independent_reader/reader.py,
written from docs/trace-format.md alone and importing nothing of branchtrace, gives the
same threads, branches (tid, from, to, kind), gaps, written and lost as
``branchtrace.open()`` on recordings of both backends (stalker ring and stream, with
threads, hooked blocks and signal handlers; ptrace), and on damaged copies of them."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import zstandard

import branchtrace
from branchtrace.decode import decode_blocks
from branchtrace.model import BranchKind
from branchtrace.store.blocks import BLOCK_DTYPE
from branchtrace.tracefile.format import (CHUNK_HEAD, FRAME, PREAMBLE, SYNC, GapInfo, RecordType,
                                          frame_crc)
from conftest import cli
from rechunk import rechunk

READER = Path(__file__).parents[1] / "independent_reader" / "reader.py"
DOC = Path(__file__).parents[2] / "docs" / "trace-format.md"


def load_reader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("independent_reader", READER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["independent_reader"] = module      # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reader = load_reader()


def assert_agree(path: Path) -> branchtrace.Trace:
    """The independent reader and branchtrace.open() read ``path`` the same way."""
    f = reader.TraceFile(str(path))
    trace = branchtrace.open(path)
    assert f.thread_order() == list(trace.threads)
    for tid in f.thread_order():
        branches, gaps, written, lost = f.thread(tid)
        want = trace.threads[tid]
        assert len(branches) == len(want), (tid, len(branches), len(want))
        for ours, theirs in (("from", "from_ip"), ("to", "to_ip"), ("kind", "kind")):
            bad = np.flatnonzero(branches[ours] != want[theirs])
            assert len(bad) == 0, f"thread {tid}: {theirs} differs at {bad[:5]}"
        assert gaps == [(g.index, g.count, g.reason) for g in trace.gaps if g.tid == tid]
        assert (written, lost) == (trace.written[tid], trace.lost[tid])
    listed = set(f.thread_order())
    assert f.other_gaps() == [(g.tid, g.index, g.count, g.reason) for g in trace.gaps
                              if g.tid not in listed]
    assert f.truncated == trace.truncated
    if len(trace.processes) == 1:
        assert [m[:4] for m in f.modules] == [(m.start, m.end, m.bias, m.path)
                                              for m in trace.modules]
    return trace


def test_the_reader_imports_nothing_of_branchtrace_and_stays_small():
    tree = ast.parse(READER.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "collections", "dataclasses", "mmap", "os", "struct",
                        "sys", "zlib", "numpy", "zstandard"}, imported
    assert len(READER.read_text().splitlines()) < 400
    # and it runs on its own, with branchtrace not importable at all
    probe = ("import sys; sys.path[:] = [p for p in sys.path if 'src' not in p]; "
             f"sys.path.insert(0, {str(READER.parent)!r}); import reader; "
             "assert not [m for m in sys.modules if m.startswith('branchtrace')]")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


# The worked example of docs/trace-format.md section 4.3.
EXAMPLE_ROWS = [(0x1000, 0x1008, 0x100a, 4, 1), (0x100a, 0x1010, 0x1015, 1, 1),
                (0x2000, 0x2000, 0x2000, 2, 1 | 32), (0x3000, 0x3000, 0x3005, 3, 1 | 16),
                (0x3005, 0x300c, 0x300d, 2, 1)]
EXAMPLE_IDS = [0, 1, 0, 2, 0, 3, 4, 1, 7]
EXAMPLE_BRANCHES = [(0x1010, 0x1000, 1), (0x1008, 0x2000, 8), (0x2000, 0x1000, 2),
                    (0x1008, 0x3000, 4), (0x300c, 0x100a, 2)]


def test_the_worked_example_of_the_doc_is_what_both_decoders_give():
    text = DOC.read_text()
    for branch in ("`(1010, 1000, call)`", "`(1008, 2000, interrupt)`", "`(2000, 1000, return)`",
                   "`(1008, 3000, cond)`", "`(300c, 100a, return)`", "`0 1 0 2 0 3 4 1 7`"):
        assert branch in text
    table = np.zeros(len(EXAMPLE_ROWS), BLOCK_DTYPE)
    for k, (start, last, end, kind, flags) in enumerate(EXAMPLE_ROWS):
        table[k] = (start, last, end, kind, flags, 1, 0)
    ids = np.array(EXAMPLE_IDS, np.uint32)
    ours = reader.decode_ids(ids, reader.columns(table))
    theirs = decode_blocks(ids, table)
    assert [tuple(int(x) for x in b) for b in ours] == EXAMPLE_BRANCHES
    assert [tuple(int(x) for x in b) for b in theirs] == EXAMPLE_BRANCHES


def record(build, tmp_path: Path, backend: str, mode: str, fixture: str, *args: str) -> Path:
    out = tmp_path / f"{fixture}-{backend}-{mode}.btrace"
    done = cli("run", "--backend", backend, "--mode", mode, *args, "-o", str(out), "--",
               str(build(fixture)))
    assert done.returncode == 0, done.stderr
    return out


CASES = [
    # backend, mode, fixture, options
    ("stalker", "stream", "threads", ()),
    ("stalker", "stream", "conf_signal_work", ("--buffer", "1000")),   # handlers under Stalker
    ("stalker", "stream", "rel_alarm", ("--buffer", "1000")),          # timer signals: native too
    ("stalker", "ring", "threads", ("--buffer", "300")),               # ring: gaps
    ("stalker", "stream", "conf_calls", ("--only", "conf_calls")),     # FOREIGN blocks
    ("ptrace", "stream", "threads", ("--buffer", "1000")),
    ("ptrace", "ring", "conf_signal_work", ("--buffer", "200")),
]


@pytest.mark.parametrize("backend,mode,fixture,options", CASES,
                         ids=["-".join(c[:3]) for c in CASES])
def test_the_independent_reader_agrees_with_open(build, tmp_path, backend, mode, fixture,
                                                 options):
    path = record(build, tmp_path, backend, mode, fixture, *options)
    trace = assert_agree(path)
    kinds = np.concatenate(list(trace.threads.values()))["kind"]
    if fixture == "threads":
        assert len(trace.threads) == 5
    if fixture in ("conf_signal_work", "rel_alarm"):      # (a ring keeps the last ones only)
        assert np.count_nonzero(kinds == BranchKind.INTERRUPT) >= (1 if mode == "ring" else 3)
    if mode == "ring":
        assert trace.gaps and any(trace.lost.values())
    if backend == "stalker":
        # the rules that matter were met: hooked blocks, and handlers' synthetic blocks
        flags = reader.TraceFile(str(path)).table["flags"]
        assert np.any(flags & reader.HOOKED)
        assert np.any(flags & reader.ASYNC) == (fixture in ("conf_signal_work", "rel_alarm"))
        assert np.any(flags & reader.FOREIGN) == ("--only" in options)


def _records(data: bytes) -> tuple[list[tuple[int, bytes]], dict[int, int]]:
    """The (type, payload) of every record, and the frame flags of those that have any
    (by their place in the list: CHUNKs of 16-bit ids)."""
    out, flags, pos = [], {}, PREAMBLE.size
    while pos < len(data):
        _, rtype, bits, length, _ = FRAME.unpack_from(data, pos)
        if bits:
            flags[len(out)] = bits
        out.append((rtype, data[pos + FRAME.size:pos + FRAME.size + length]))
        pos += FRAME.size + length
    return out, flags


def _frame(rtype: int, payload: bytes, flags: int = 0) -> bytes:
    head = FRAME.pack(SYNC, rtype, flags, len(payload), 0)
    return FRAME.pack(SYNC, rtype, flags, len(payload), frame_crc(head, payload)) + payload


def damage(src: Path, dst: Path, cut: bool) -> None:
    """``src`` with chunks of its busiest thread missing, duplicated (overlapping) and
    not decompressing (two of them next to each other: one gap), GAP records (inside a
    hole, after one, past the end, of no thread), a record of an unknown type and a
    damaged record; ``cut``: without THREAD and END records (cut short)."""
    data = src.read_bytes()
    records, flags = _records(data)
    chunks = [k for k, (t, _) in enumerate(records) if t == RecordType.CHUNK]
    tids = [int.from_bytes(records[k][1][:4], "little") for k in chunks]
    busiest = max(set(tids), key=tids.count)
    mine = [k for k, tid in zip(chunks, tids) if tid == busiest]
    assert len(mine) >= 12, len(mine)

    def broken(k: int) -> bytes:         # the frame cut in half: declares more than it holds
        payload = records[k][1]
        body = payload[CHUNK_HEAD.size:]
        assert zstandard.frame_content_size(body[:len(body) // 2]) > 0
        return payload[:CHUNK_HEAD.size] + body[:len(body) // 2]

    out = [data[:PREAMBLE.size]]
    for k, (rtype, payload) in enumerate(records):
        if k == mine[2] or k == mine[9]:
            continue                                        # missing
        if k in (mine[4], mine[8]):
            payload = broken(k)                             # does not decompress
        if cut and rtype in (RecordType.THREAD, RecordType.END):
            continue
        if k == mine[5]:
            out.append(_frame(77, b"a record of a type from the future"))
            for tid, index in ((busiest, 100), (busiest, 150), (busiest, 10**9), (1, 7)):
                gap = GapInfo(tid, index, 5, "lost by the test")
                out.append(_frame(RecordType.GAP, gap.encode()))
            out.append(b"BTR\x1e" + b"\x02\x00\x00\x00\x10\x00\x00\x00garbage!")
        out.append(_frame(rtype, payload, flags.get(k, 0)))
        if k == mine[6]:
            out.append(_frame(rtype, payload, flags.get(k, 0)))  # again: overlaps, dropped
    dst.write_bytes(b"".join(out))


@pytest.mark.parametrize("backend,fixture,decoder", [
    ("ptrace", "threads", "numpy"),
    ("stalker", "conf_signal_work", "numpy"),
    ("stalker", "conf_signal_work", "numpy-spans"),    # decode_blocks' parallel spans
    ("stalker", "conf_signal_work", "fused"),          # decode/fused.py (numba), chunk by chunk
])
@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut"])
def test_the_independent_reader_agrees_on_damaged_files(build, tmp_path, monkeypatch, backend,
                                                        fixture, decoder, cut):
    # open() takes these paths only for long threads: made to take them here
    import branchtrace.decode
    import branchtrace.decode.fused

    used: list[str] = []

    def spy(module: ModuleType, name: str) -> None:
        real = getattr(module, name)

        def call(*args: object, **kwargs: object) -> object:
            used.append(name)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, call)

    if decoder == "numpy-spans":
        monkeypatch.setattr(branchtrace.decode, "_CHUNK", 50)
        spy(branchtrace.decode, "_two_passes")
    if decoder == "fused":
        pytest.importorskip("numba")
        monkeypatch.setattr(branchtrace.decode.fused, "FUSED_MIN_IDS", 1)
        monkeypatch.setattr(branchtrace.decode.fused, "STEP_IDS", 64)
        spy(branchtrace.decode.fused, "decode")
    path = record(build, tmp_path, backend, "stream", fixture)
    small = tmp_path / "small.btrace"
    rechunk(path, small, 40)
    bad = tmp_path / "bad.btrace"
    damage(small, bad, cut)
    trace = assert_agree(bad)
    assert trace.truncated == cut
    assert bool(used) == (decoder != "numpy")
    corrupt = [g for g in trace.gaps if g.reason == "corrupt chunk"]
    assert len(corrupt) == 3            # mine[2], mine[4], and mine[8] + mine[9] as one
    # chunks of 40 records, the one of records 80-119 missing: GAP indexes 100 and 150
    # move down (FROMTO: a branch per record), past the end ones stop at the end
    placed = [g.index for g in trace.gaps if g.reason == "lost by the test"]
    if backend == "ptrace":
        assert placed[:2] == [80, 110]
    assert placed[3] == 7 and placed[2] == len(trace.threads[corrupt[0].tid])
