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

from branchtrace.model import BRANCH_DTYPE, Gap
from branchtrace.trace import Trace


def blockid_branches(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The branches of a block-id sequence, one transition at a time, by the rule of
    docs/stalker.md (a taken branch where a block does not end where the next one
    starts, from its last instruction, of its kind; ids past the table break the
    chain): a reference for tables of complete, ordinary blocks, not the decoder."""
    out = []
    for prev, cur in zip(ids[:-1].tolist(), ids[1:].tolist()):
        if prev >= len(table) or cur >= len(table):
            continue
        a, b = table[prev], table[cur]
        if int(b["start"]) != int(a["end"]):
            out.append((int(a["last"]), int(b["start"]), int(a["kind"])))
    return np.array(out, BRANCH_DTYPE)


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
                         forged: bool = False) -> None:
    """Each thread of ``trace`` is the original thread with pieces missing, only where
    the trace says so: its branches, cut at its gaps' indexes, are slices of the
    original in order (greedy earliest matching, which finds an order if there is one),
    and if it is not the whole original thread, it has a gap or the trace a note.

    ``known_gaps`` and ``known_notes`` are the ones the test wrote into the file: they
    say nothing about damage.

    ``forged``: the damage came with a valid CRC, so the file itself says something
    else. A forged thread id moves a chunk to a thread that is not in the original (the
    original thread shows the hole), and a forged record index moves a chunk to another
    place (after a gap): the pieces are then slices of the original in any order."""
    known_gaps, known_notes = set(known_gaps), set(known_notes)
    told = trace.truncated or any(n not in known_notes for n in trace.notes)
    for tid, got in trace.threads.items():
        if tid not in original:
            assert forged, f"thread {tid} is not in the original"
            continue
        want = original[tid]
        cuts = sorted({min(max(g.index, 0), len(got)) for g in trace.gaps if g.tid == tid})
        pos, lo = 0, 0
        for hi in [*cuts, len(got)]:
            at = _find(got[lo:hi], want, 0 if forged else pos)
            assert at >= 0, (f"thread {tid}: branches {lo}..{hi} are not a piece of the "
                             f"original after branch {pos} (gaps at {cuts})")
            pos, lo = at + (hi - lo), hi
        if len(got) != len(want) or not np.array_equal(got, want):
            marked = any(g.tid == tid and g not in known_gaps for g in trace.gaps)
            assert marked or told, f"thread {tid} lost branches without a gap or a note"
