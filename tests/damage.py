"""Oracles for damaged files, shared by the fuzz tests: what a reader may give back
from a file that was cut short or damaged, compared with what the undamaged file holds.

* Cut short: every thread's branches are a prefix of the original thread's (nothing
  invented, nothing reordered, nothing from later in the file).
* Damaged: every thread's branches, split at the gaps the reader reports, are pieces of
  the original thread in order; a thread that lost anything has a gap, or the trace says
  in a note (or by ``truncated``) that something is missing.

The expected values are the arrays the test wrote, never what the reader gives for the
undamaged file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from branchtrace.model import Gap
from branchtrace.trace import Trace


def assert_prefixes(original: Mapping[int, np.ndarray], trace: Trace) -> None:
    """Each thread of ``trace`` holds a prefix of the same thread of ``original``."""
    for tid, got in trace.threads.items():
        assert tid in original, f"thread {tid} is not in the original"
        want = original[tid]
        assert len(got) <= len(want), (tid, len(got), len(want))
        assert np.array_equal(got, want[:len(got)]), f"thread {tid}: not a prefix"


def _find(piece: np.ndarray, whole: np.ndarray, start: int) -> int:
    """The first position >= ``start`` where ``piece`` lies in ``whole``, or -1."""
    if len(piece) == 0:
        return start
    end = len(whole) - len(piece)
    if end < start:
        return -1
    candidates = np.flatnonzero(whole[start:end + 1] == piece[0]) + start
    for at in candidates:
        if np.array_equal(whole[at:at + len(piece)], piece):
            return int(at)
    return -1


def assert_damage_marked(original: Mapping[int, np.ndarray], trace: Trace,
                         known_gaps: Iterable[Gap] = (), known_notes: Iterable[str] = (),
                         foreign_ok: bool = False) -> None:
    """Each thread of ``trace`` is the original thread with pieces missing, only where
    the trace says so: its branches, cut at its gaps' indexes, are slices of the
    original in order (greedy earliest matching, which finds an order if there is one),
    and if it is not the whole original thread, it has a gap or the trace a note.

    ``known_gaps`` and ``known_notes`` are the ones the test wrote into the file: they
    say nothing about damage. ``foreign_ok``: a thread that is not in the original may appear (a damaged thread
    id with a valid CRC moves a chunk to another thread); the original thread then
    shows the hole."""
    known_gaps, known_notes = set(known_gaps), set(known_notes)
    told = trace.truncated or any(n not in known_notes for n in trace.notes)
    for tid, got in trace.threads.items():
        if tid not in original:
            assert foreign_ok, f"thread {tid} is not in the original"
            continue
        want = original[tid]
        cuts = sorted({min(max(g.index, 0), len(got)) for g in trace.gaps if g.tid == tid})
        pos, lo = 0, 0
        for hi in [*cuts, len(got)]:
            at = _find(got[lo:hi], want, pos)
            assert at >= 0, (f"thread {tid}: branches {lo}..{hi} are not a piece of the "
                             f"original after branch {pos} (gaps at {cuts})")
            pos, lo = at + (hi - lo), hi
        if len(got) != len(want) or not np.array_equal(got, want):
            marked = any(g.tid == tid and g not in known_gaps for g in trace.gaps)
            assert marked or told, f"thread {tid} lost branches without a gap or a note"
