"""The function segments of one thread from its branches piece by piece.

:func:`~.callstack.call_trace` rebuilds a thread's whole call stack from all of its
branches at once: memory grows with the branches (a frame and a segment per call). A
:class:`CallStream` runs the same stack pass (the same rules, the same code) over the
branches as they are decoded, a piece at a time, and hands back each segment as soon as
it is finished (a segment ends where the next begins). It keeps only the stack and the
segment under way, so memory grows with the call depth, never with the branches.

What it cannot know, it says: the segments' depths are shifted so that the shallowest
frame *seen so far* is 0. :func:`call_trace` shifts them by the shallowest frame of the
whole thread, which is below the first only when the thread returns out of the frame
it started in (a trace that begins inside a call: an attach, a ring buffer, and the
exit path of most programs); segments written before such a return are then indented
less than there. A reader that keeps its lines to the end (``history --last``) can
shift them by the final :attr:`CallStream.lowest` and be exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import Gap
from .callstack import _Walk, events
from .code import CodeReader
from .functions import FunctionIndex

#: Frames kept before the frames no longer needed are dropped.
_COMPACT_AT = 1 << 16


@dataclass(frozen=True, slots=True)
class Segments:
    """Finished function segments, numbered ``number``, ``number + 1``, ... from 1 over
    the thread, as parallel arrays."""

    number: int             # of the first
    function: np.ndarray    # uint64 function key (0 for a gap)
    depth: np.ndarray       # int64; 0 is the shallowest frame seen so far (0 for a gap)
    gap: list[Gap | None]   # the gap a segment stands for
    address: np.ndarray     # uint64 where it begins (for code without a name)
    first: np.ndarray       # int64 its first run
    last: np.ndarray        # int64 its last run (first - 1 for a gap)

    def __len__(self) -> int:
        return len(self.gap)


class CallStream:
    """Feed a thread's branches (:meth:`branches`) and gaps (:meth:`gap`) in order, then
    :meth:`finish`; each returns the segments it finished."""

    def __init__(self, functions: FunctionIndex, reader: CodeReader) -> None:
        self.functions, self.reader = functions, reader
        self.walk = _Walk({})
        self.n = 0                        # branches fed so far
        self.gaps: list[Gap] = []         # by id (the walk's -1 - id)
        self.waiting: list[int] = []      # gap ids at branch n, not yet in the walk
        self.number = 0                   # segments handed out
        self.lowest = 0                   # the shallowest depth seen
        self.addresses: list[int] = []    # per segment in the walk: where it begins
        self.before: tuple[int, int] | None = None  # last branch: (to function, to_ip)
        self.started = False

    @classmethod
    def resumed(cls, functions: FunctionIndex, reader: CodeReader, *, branches: int,
                segments: int, lowest: int, open_first: int, before: tuple[int, int],
                stack: list[tuple[int, int, int, int]], base: int) -> CallStream:
        """The pass after the first ``branches`` branches of a thread (see
        :mod:`.segwalk`): ``segments`` made so far (the one under way, which began at run
        ``open_first``, included), the shallowest depth ``lowest``, ``before`` (the last
        branch's target function and address), the stack bottom first as (function,
        return lo, return hi, signal address or -1), its bottom frame at depth ``base``."""
        calls = cls(functions, reader)
        walk = calls.walk
        for i, (func, lo, hi, sig) in enumerate(stack):
            walk.f_func.append(func)
            walk.f_depth.append(base + i)
            walk.f_parent.append(i - 1)
            walk.f_open.append(0)
            walk.f_close.append(-1)
            walk.st.append(i)
            walk.st_lo.append(lo)
            walk.st_hi.append(hi)
            walk.st_sig.append(sig)
        walk.roots.append(0)
        walk.seg_first.append(open_first)
        walk.seg_frame.append(len(stack) - 1)
        calls.addresses.append(0)
        calls.n, calls.number, calls.lowest = branches, segments - 1, lowest
        calls.before, calls.started = before, True
        return calls

    @property
    def pending(self) -> int | None:
        """The first run of the segment under way (None before the first branch)."""
        return self.walk.seg_first[-1] if self.walk.seg_first else None

    def gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.waiting.append(len(self.gaps) - 1)

    def branches(self, b: np.ndarray) -> Segments:
        """The segments finished by the next branches ``b``."""
        if not len(b):
            return self._take(keep=len(self.walk.seg_first))
        walk, off = self.walk, self.n
        if self.waiting:
            walk.gaps_at.setdefault(off, []).extend(self.waiting)
            self.waiting = []
        kf, kt = self.functions.keys(b["from_ip"]), self.functions.keys(b["to_ip"])
        if not self.started:
            walk.start(int(kf.key[0]))
            self.started = True
        inner = [off] if off in walk.gaps_at and off else []
        walk.feed(events(b, kf, kt, inner, self.reader, off,
                         None if self.before is None else self.before[0]))
        walk.gaps_at.pop(off, None)
        # where each new segment begins: the target of the branch before its first run
        firsts = np.array(walk.seg_first[len(self.addresses):], dtype=np.int64)
        prev = firsts - 1 - off
        to_ip = b["to_ip"]
        at = np.where(prev >= 0, to_ip[np.clip(prev, 0, len(b) - 1)], 0)
        if self.before is not None:
            at = np.where(prev < 0, self.before[1], at)
        elif off == 0:
            at = np.where(prev < 0, b["from_ip"][0], at)
        self.addresses.extend(at.tolist())
        self.before = (int(kt.key[-1]), int(to_ip[-1]))
        self.n += len(b)
        return self._take(keep=1)

    def finish(self) -> Segments:
        """The segments left: the last one, and the gaps after the last branch."""
        walk = self.walk
        if not self.started:
            # no branch: only gaps
            walk.seg_first.extend([0] * len(self.waiting))
            walk.seg_frame.extend(-1 - g for g in self.waiting)
        else:
            walk.gaps_at[self.n] = self.waiting
            walk.finish(self.n)
        self.waiting = []
        self.addresses.extend([0] * (len(walk.seg_first) - len(self.addresses)))
        return self._take(keep=0)

    def _take(self, keep: int) -> Segments:
        """The finished segments (all but the last ``keep``), then forget them."""
        walk = self.walk
        end = max(0, len(walk.seg_first) - keep)
        if walk.f_depth:
            self.lowest = min(self.lowest, min(walk.f_depth))
        frame = np.array(walk.seg_frame[:end], dtype=np.int64)
        first = np.array(walk.seg_first[:end + 1], dtype=np.int64)
        last = np.empty(end, dtype=np.int64)
        last[:len(first) - 1] = first[1:] - 1
        if len(first) == end and end:
            last[-1] = self.n                      # the last segment of the thread
        first = first[:end]
        is_gap = frame < 0
        last[is_gap] = first[is_gap] - 1
        real = np.maximum(frame, 0)
        f_func = np.array(walk.f_func, dtype=np.uint64) if walk.f_func else np.zeros(1, np.uint64)
        f_depth = np.array(walk.f_depth, dtype=np.int64) if walk.f_depth else np.zeros(1, np.int64)
        out = Segments(self.number + 1, np.where(is_gap, np.uint64(0), f_func[real]),
                       np.where(is_gap, 0, f_depth[real] - self.lowest),
                       [self.gaps[-1 - f] if f < 0 else None for f in frame.tolist()]
                       if is_gap.any() else [None] * end,
                       np.array(self.addresses[:end], dtype=np.uint64), first, last)
        self.number += end
        del walk.seg_first[:end], walk.seg_frame[:end], self.addresses[:end]
        if len(walk.f_func) > _COMPACT_AT and len(walk.f_func) > 4 * (len(walk.st) + 1):
            self._compact()
        return out

    def _compact(self) -> None:
        """Drop the frames neither on the stack nor in the segment under way."""
        walk = self.walk
        live = sorted(set(walk.st) | {f for f in walk.seg_frame if f >= 0})
        new = {old: i for i, old in enumerate(live)}
        for name in ("f_func", "f_depth", "f_open", "f_close"):
            values = getattr(walk, name)
            values[:] = [values[f] for f in live]
        walk.f_parent[:] = [new.get(walk.f_parent[f], -1) for f in live]
        walk.st[:] = [new[f] for f in walk.st]
        walk.seg_frame[:] = [new[f] if f >= 0 else f for f in walk.seg_frame]
        walk.roots[:] = [new[f] for f in walk.roots if f in new]

