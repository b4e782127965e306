"""GDB's call and instruction history, from a trace.

``record function-call-history`` prints one line per function segment, numbered from 1;
:func:`render_calls` does the same, with GDB's modifiers as keywords: ``indent`` (/c,
indent by call depth, on by default here), ``insn_ranges`` (/i, ``inst FIRST,LAST``)
and ``lines`` (/l, ``at FILE:FIRST,LAST``)::

    1	main	inst 1,1	at fib.c:16
    2	  fib	inst 2,12	at fib.c:5,6

``record instruction-history`` prints the instructions, numbered from 1 over the
thread; :func:`render_insns` decodes them from the binaries on disk, with source lines
interleaved on request (/s)::

    2	0x0000555555555129 <fib+0>:	endbr64

A gap (records lost) is a line of its own: a numbered segment in the call history as in
GDB, an unnumbered line in the instruction history.
"""

from __future__ import annotations

import os
from typing import IO

import numpy as np

from ..analysis import CallTrace, CodeReader, FunctionIndex, Runs, call_trace
from ..analysis.callstream import Segments
from ..analysis.functions import UNKNOWN_LIMIT
from ..model import Gap
from ..symbols.elf import read_regular
from ..trace import Trace
from .base import pick_threads

#: Segments or instructions written per batch (bounded memory on big traces).
_BATCH = 1 << 14


def gap_text(gap: Gap) -> str:
    return f"[gap: {gap.count} record{'s' if gap.count != 1 else ''} lost ({gap.reason})]"


def render_calls(trace: Trace, out: IO[str], *, tid: int | None = None, last: int | None = None,
                 indent: bool = True, insn_ranges: bool = False, lines: bool = False) -> None:
    """Write the function call history of each thread (or of ``tid``) to ``out``."""
    tids = pick_threads(trace, tid)
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    for t in tids:
        if len(tids) > 1:
            out.write(f"thread {t}:\n")
        ct = call_trace(trace, t, functions=functions, reader=reader)
        runs = Runs(trace, t, reader) if insn_ranges or lines else None
        _write_calls(ct, runs, out, last, indent, insn_ranges, lines, trace.branches(t))


def _write_calls(ct: CallTrace, runs: Runs | None, out: IO[str], last: int | None,
                 indent: bool, insn_ranges: bool, lines: bool,
                 branches: np.ndarray | None = None) -> None:
    total = len(ct)
    begin = max(0, total - last) if last is not None else 0
    frames = ct.seg_frame[begin:]
    labels = _labels(ct, begin, indent)
    if branches is not None:
        _address_unknown(ct, begin, labels, branches)
    columns: list[list[str]] = [np.arange(begin + 1, total + 1).astype(str).tolist(), labels]
    if insn_ranges and runs is not None:
        fn, counts = runs.first_number, runs.counts
        a, b = ct.seg_first[begin:], ct.seg_last[begin:]
        empty = b < a                       # a gap, or a segment cut short by one
        a, b = np.where(empty, 0, a), np.where(empty, 0, b)
        first, last_ = fn[a].tolist(), (fn[b] + counts[b] - 1).tolist()
        columns.append(["" if e or y < x else f"\tinst {x},{y}"
                        for e, x, y in zip(empty.tolist(), first, last_)])
    if lines and runs is not None:
        columns.append([f"\tat {w}" if w else "" for w in _segment_lines(ct, runs)[begin:]])
    for i in np.flatnonzero(frames < 0).tolist():
        columns[1][i] = gap_text(ct.gaps[-1 - int(frames[i])])
    rows = list(zip(*columns))
    for lo in range(0, len(rows), _BATCH):
        batch = rows[lo:lo + _BATCH]
        if len(columns) == 2:
            out.write("".join(map("{0[0]}\t{0[1]}\n".format, batch)))
        else:
            out.write("".join(f"{r[0]}\t{''.join(r[1:])}\n" for r in batch))


def _labels(ct: CallTrace, begin: int, indent: bool) -> list[str]:
    """``"    fib"`` per segment from ``begin``: the name, indented by depth."""
    keys = ct.seg_function[begin:].astype(np.uint64)
    depth = ct.seg_depth[begin:] if indent else np.zeros(len(keys), dtype=np.int64)
    if not len(keys):
        return []
    if int(depth.max()) < 1 << 16 and int(keys.max()) < 1 << 48:
        pair = (keys << np.uint64(16)) | depth.astype(np.uint64)
        unique, inverse = np.unique(pair, return_inverse=True)
        ukeys, udepth = (unique >> np.uint64(16)).tolist(), (unique & np.uint64(0xFFFF)).tolist()
    else:
        both = np.stack([keys.astype(np.int64), depth], axis=1)
        uniq, inverse = np.unique(both, axis=0, return_inverse=True)
        ukeys, udepth = uniq[:, 0].astype(np.uint64).tolist(), uniq[:, 1].tolist()
    text = np.array([f"{'  ' * d}{ct.functions.name(k)}" for k, d in zip(ukeys, udepth)],
                    dtype=object)
    labels: list[str] = text[inverse.ravel()].tolist()
    return labels


def segment_labels(s: Segments, functions: FunctionIndex, indent: bool) -> list[str]:
    """Labels of segments that come a window at a time (reporters/history_stream.py),
    as :func:`_labels` and :func:`_address_unknown` make them."""
    keys = s.function
    depth = s.depth if indent else np.zeros(len(keys), dtype=np.int64)
    pair = np.stack([keys.astype(np.int64), depth], axis=1)
    uniq, inverse = np.unique(pair, axis=0, return_inverse=True)
    text = np.array([f"{'  ' * d}{functions.name(k)}" for k, d in
                     zip(uniq[:, 0].astype(np.uint64).tolist(), uniq[:, 1].tolist())],
                    dtype=object)
    labels: list[str] = text[inverse.ravel()].tolist()
    for i in np.flatnonzero(keys < UNKNOWN_LIMIT).tolist():
        gap = s.gap[i]
        if gap is not None:
            labels[i] = gap_text(gap)
            continue
        label = labels[i]
        name = label.lstrip(" ")
        if name.startswith("??"):
            labels[i] = f"{label[:len(label) - len(name)]}{int(s.address[i]):#x}{name[2:]}"
    return labels


def _address_unknown(ct: CallTrace, begin: int, labels: list[str],
                     branches: np.ndarray) -> None:
    """Label the segments of unnamed code (stripped, deleted, JIT) with the address they
    begin at, in hex: ``0x55f6e84f0169 (prog)`` instead of ``?? (prog)``."""
    keys = ct.seg_function[begin:]
    unknown = np.flatnonzero((keys < UNKNOWN_LIMIT) & (ct.seg_frame[begin:] >= 0))
    if not len(unknown) or not len(branches):
        return
    runs = ct.seg_first[begin:][unknown]
    n = len(branches)
    # run r begins where branch r - 1 went; run 0 began before the trace: its last address
    at = np.where(runs > 0, branches["to_ip"][np.clip(runs - 1, 0, n - 1)],
                  branches["from_ip"][0])
    for i, address in zip(unknown.tolist(), at.tolist()):
        label = labels[i]
        name = label.lstrip(" ")
        if name.startswith("??"):
            labels[i] = f"{label[:len(label) - len(name)]}{address:#x}{name[2:]}"


def _segment_lines(ct: CallTrace, runs: Runs) -> list[str]:
    """``fib.c:5,6`` per segment: the lines its instructions came from, in the file of
    its first instruction with a line ("" if none, and for gaps)."""
    file, lo, hi, names = runs.lines()
    real = np.flatnonzero(ct.seg_last >= ct.seg_first)
    out = [""] * len(ct)
    if not len(real):
        return out
    starts = ct.seg_first[real]
    # the segments that hold runs tile the runs [0, last run] in order
    end = int(ct.seg_last[real[-1]]) + 1
    file, lo, hi = file[:end], lo[:end], hi[:end]
    pos = np.where(file >= 0, np.arange(end), end)
    first_with = np.minimum.reduceat(pos, starts)
    seg_file = np.where(first_with < end, file[np.minimum(first_with, end - 1)], -1)
    lengths = np.diff(np.append(starts, end))
    own = file == np.repeat(seg_file, lengths)
    big = np.iinfo(np.int32).max
    seg_lo = np.minimum.reduceat(np.where(own, lo, big), starts)
    seg_hi = np.maximum.reduceat(np.where(own, hi, 0), starts)
    base = [os.path.basename(n) for n in names]
    for s, f, a, b in zip(real.tolist(), seg_file.tolist(), seg_lo.tolist(), seg_hi.tolist()):
        if f >= 0:
            out[s] = f"{base[f]}:{a}" if a == b else f"{base[f]}:{a},{b}"
    return out


def render_insns(trace: Trace, out: IO[str], *, tid: int | None = None, last: int | None = None,
                 source: bool = False) -> None:
    """Write the instruction history of each thread (or of ``tid``) to ``out``."""
    tids = pick_threads(trace, tid)
    reader = CodeReader(trace.symbolizer)
    sources = _Sources()
    for t in tids:
        if len(tids) > 1:
            out.write(f"thread {t}:\n")
        _write_insns(trace, Runs(trace, t, reader), out, last, sources if source else None)


def _write_insns(trace: Trace, runs: Runs, out: IO[str], last: int | None,
                 sources: _Sources | None) -> None:
    counts, first = runs.counts, runs.first_number
    total = runs.total
    skip_before = max(0, total - last) if last is not None else 0   # instructions not shown
    r0 = int(np.searchsorted(first + counts - 1, skip_before + 1)) if skip_before else 0
    gaps: dict[int, list[Gap]] = {}
    for g in trace.gaps:
        if g.tid == runs.tid:
            gaps.setdefault(min(max(g.index, 0), runs.n), []).append(g)
    state: list[object] = [None, None]       # the last (file, line) shown
    for lo in range(r0, runs.n + 1, _BATCH):
        hi = min(lo + _BATCH, runs.n + 1)
        rows: list[tuple[int, int, int, str]] = []   # (run, number, address, text)
        for r in range(lo, hi):
            number = int(first[r])
            for insn in runs.instructions(r):
                if number > skip_before:
                    rows.append((r, number, insn.address, insn.text))
                number += 1
        _write_rows(trace, rows, gaps, out, sources, state)
    for g in gaps.get(runs.n, ()) if not counts[runs.n] else ():
        out.write(f"{gap_text(g)}\n")


def _write_rows(trace: Trace, rows: list[tuple[int, int, int, str]], gaps: dict[int, list[Gap]],
                out: IO[str], sources: _Sources | None, state: list[object]) -> None:
    if not rows:
        return
    res = trace.symbolizer.resolve(np.array([row[2] for row in rows], dtype=np.uint64))
    fnames, files = res.function_names, res.file_names
    func, offset = res.function.tolist(), res.offset.tolist()
    file, line = res.file.tolist(), res.line.tolist()
    buf: list[str] = []
    prev_run = -1
    for i, (run, number, address, text) in enumerate(rows):
        if run != prev_run:
            for g in gaps.get(run, ()):
                buf.append(f"{gap_text(g)}\n")
                state[0] = state[1] = None
            prev_run = run
        if sources is not None and file[i] >= 0 and line[i] > 0:
            where = (files[file[i]], line[i])
            if where[0] != state[0]:
                buf.append(f"{os.path.basename(where[0])}:\n")
                state[1] = None
            if where != (state[0], state[1]):
                buf.append(f"{line[i]}\t{sources.line(where[0], line[i])}\n")
            state[0], state[1] = where
        label = f" <{fnames[func[i]]}+{offset[i]}>" if func[i] >= 0 else ""
        buf.append(f"{number}\t{address:#018x}{label}:\t{text}\n")
    out.write("".join(buf))


class _Sources:
    """Source files read on first use (None when not on disk)."""

    def __init__(self) -> None:
        self._files: dict[str, list[str] | None] = {}

    def line(self, path: str, number: int) -> str:
        if path not in self._files:
            try:
                data = read_regular(path)    # never a FIFO or a device named by DWARF
                self._files[path] = data.decode("utf-8", "replace").splitlines()
            except OSError:
                self._files[path] = None
        text = self._files[path]
        return text[number - 1].strip() if text is not None and 0 < number <= len(text) else ""
