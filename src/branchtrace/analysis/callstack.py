"""Call stacks rebuilt from calls and returns, cut into GDB's function segments.

One pass over the branches that change the function (calls, returns, interrupts, system
calls that do not return to their fall-through, jumps into another function, and gaps)
keeps a stack of frames; everything else is left to numpy. A *frame* is one function
instance; a *segment* is a maximal run of execution in one frame (GDB's "function
segment": a function that calls twice shows as three segments of one frame).

What a trace does not say is guessed the way that keeps the stack honest:

* A return lands on a return address: it goes back to the frame whose call it follows
  (the call's length is read from the binary, or 2..15 bytes when the code is not
  there) if that call was made from the function it lands in, and every frame above is
  closed (longjmp-like unwinding, lost returns). A return that lands on no return
  address goes back to the nearest frame of the function it lands in; failing that, it
  is a return into the caller we never saw.
* A trace that starts in the middle of a call: a return out of the bottom frame lowers
  the baseline (a new bottom frame below it, there from the start); depths are shifted
  at the end so the shallowest is 0, as GDB does.
* A jump into another function: to its first byte, a tail call (the new function takes
  the frame's place: the tail caller's frame is gone); elsewhere, to a function on the
  stack, a longjmp (unwind to it); else the frame switches function in place.
* A signal: the interrupt pushes a frame for the handler that remembers where the
  thread was; the handler's return to the restorer stays in that frame, and the
  sigreturn system call, landing where the thread was, pops it.
* A gap: the lost records may have called or returned anything. Execution resumes at
  the next branch's source: in the current frame if it is the same function, in a
  frame below if one is (returns were lost), else in a new frame one deeper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import BranchKind, Gap
from ..trace import Trace
from .code import CodeReader
from .functions import FunctionIndex, Keys

_NONE, _CALL, _RET, _INT, _SYS, _JUMP = range(6)


@dataclass(frozen=True, eq=False)
class CallTrace:
    """The frames and function segments of one thread.

    Runs are numbered as in :class:`~branchtrace.analysis.runs.Runs`: run ``k`` ends
    with branch ``k``, run ``n`` is the tail after the last branch. A segment cut short
    by a gap may hold no run at all (``last == first - 1``): the frame was entered, what
    it ran is lost. Frames open and close at *positions*: ``2 * r`` is the start of run
    ``r``, ``2 * r + 1`` a point within it (right after a gap there, or where the run
    fell through into another function), so that every frame has a positive extent and
    frames nest in position order.
    """

    tid: int
    n: int                        # branches in the thread
    functions: FunctionIndex
    gaps: tuple[Gap, ...]         # this thread's gaps, in order
    seg_frame: np.ndarray         # int64 per segment; ``-1 - i`` marks gaps[i]
    seg_first: np.ndarray         # int64: the segment's first run
    seg_last: np.ndarray          # int64: its last run (first - 1 for a gap)
    frame_function: np.ndarray    # uint64 function key per frame
    frame_depth: np.ndarray       # int64, the shallowest frame is 0
    frame_parent: np.ndarray      # int64, -1 for a bottom frame
    frame_open: np.ndarray        # int64 position it opens at (0 for frames under the start)
    frame_close: np.ndarray       # int64 position it closes at (2 * (n + 1) if never closed)

    def __len__(self) -> int:
        return len(self.seg_frame)

    @property
    def is_gap(self) -> np.ndarray:
        return self.seg_frame < 0

    @property
    def seg_depth(self) -> np.ndarray:
        """Depth of each segment's frame (0 for a gap)."""
        if not len(self.frame_depth):
            return np.zeros(len(self.seg_frame), dtype=np.int64)
        return np.where(self.is_gap, 0, self.frame_depth[np.maximum(self.seg_frame, 0)])

    @property
    def seg_function(self) -> np.ndarray:
        """Function key of each segment (0 for a gap)."""
        if not len(self.frame_function):
            return np.zeros(len(self.seg_frame), dtype=np.uint64)
        return np.where(self.is_gap, np.uint64(0),
                        self.frame_function[np.maximum(self.seg_frame, 0)])

    @property
    def seg_branches(self) -> np.ndarray:
        """Branches taken in each segment (runs that end with a branch)."""
        counts: np.ndarray = np.minimum(self.seg_last, self.n - 1) - self.seg_first + 1
        out: np.ndarray = np.maximum(counts, 0)
        return out

    def gap_of(self, segment: int) -> Gap | None:
        f = int(self.seg_frame[segment])
        return self.gaps[-1 - f] if f < 0 else None


def call_trace(trace: Trace, tid: int, *, functions: FunctionIndex | None = None,
               reader: CodeReader | None = None) -> CallTrace:
    """Rebuild the call stack of thread ``tid`` of ``trace``."""
    b = trace.branches(tid)
    n = len(b)
    functions = functions if functions is not None else FunctionIndex(trace.symbolizer)
    gaps = tuple(sorted((g for g in trace.gaps if g.tid == tid), key=lambda g: g.index))
    gaps_at: dict[int, list[int]] = {}
    for i, g in enumerate(gaps):
        gaps_at.setdefault(min(max(g.index, 0), n), []).append(i)
    if n == 0:
        s = len(gaps)
        first = np.zeros(s, dtype=np.int64)
        e = np.zeros(0, dtype=np.int64)
        return CallTrace(tid, 0, functions, gaps, -1 - np.arange(s, dtype=np.int64), first,
                         first - 1, np.zeros(0, np.uint64), e, e, e, e)
    kf = functions.keys(b["from_ip"])
    kt = functions.keys(b["to_ip"])
    walk = _Walk(gaps_at)
    walk.run(n, int(kf.key[0]), events(b, kf, kt, [k for k in gaps_at if 0 < k < n],
                                       reader or CodeReader(trace.symbolizer)))
    first = np.array(walk.seg_first, dtype=np.int64)
    frame = np.array(walk.seg_frame, dtype=np.int64)
    last = np.empty_like(first)
    last[:-1] = first[1:] - 1
    last[-1] = n
    last[frame < 0] = first[frame < 0] - 1
    depth = np.array(walk.f_depth, dtype=np.int64)
    close = np.array(walk.f_close, dtype=np.int64)
    close[close < 0] = 2 * (n + 1)
    return CallTrace(tid, n, functions, gaps, frame, first, last,
                     np.array(walk.f_func, dtype=np.uint64), depth - depth.min(),
                     np.array(walk.f_parent, dtype=np.int64),
                     np.array(walk.f_open, dtype=np.int64), close)


def events(b: np.ndarray, kf: Keys, kt: Keys, gap_at: list[int], reader: CodeReader,
           offset: int = 0, before: int | None = None) -> _Events:
    """The rows of the stack pass for branches ``b`` (branch ``offset`` of the thread
    first) with their function keys: ``gap_at``, the thread indices of the gaps among
    them (not at 0); ``before``, the function key of the previous branch's target
    (None at the start of the thread)."""
    n = len(b)
    kind = b["kind"]
    op = np.zeros(n, dtype=np.int8)
    op[(kind == BranchKind.CALL) | (kind == BranchKind.INDIRECT_CALL)] = _CALL
    op[kind == BranchKind.RETURN] = _RET
    op[kind == BranchKind.INTERRUPT] = _INT
    op[kind == BranchKind.SYSCALL] = _SYS
    op[(op == _NONE) & (kf.key != kt.key)] = _JUMP
    gap_mask = np.zeros(n, dtype=bool)
    gap_mask[[k - offset for k in gap_at]] = True
    pre = np.zeros(n, dtype=bool)
    pre[1:] = kf.key[1:] != kt.key[:-1]     # fell through into another function
    if before is not None and n:
        pre[0] = int(kf.key[0]) != before
    pre &= ~gap_mask
    idx = np.flatnonzero((op != _NONE) | pre | gap_mask)
    # where a return out of each call's frame should land
    ret_lo = np.zeros(len(idx), dtype=np.uint64)
    ret_hi = np.zeros(len(idx), dtype=np.uint64)
    is_call = op[idx] == _CALL
    sites = b["from_ip"][idx[is_call]]
    lengths = reader.call_lengths(sites)
    ret_lo[is_call] = sites + np.where(lengths > 0, lengths, np.uint64(2))
    ret_hi[is_call] = sites + np.where(lengths > 0, lengths, np.uint64(15))
    return _Events(
        branch=(idx + offset).tolist(), op=op[idx].tolist(), from_ip=b["from_ip"][idx].tolist(),
        to_ip=b["to_ip"][idx].tolist(), from_func=kf.key[idx].tolist(),
        to_func=kt.key[idx].tolist(), to_start=kt.start[idx].tolist(),
        fell_through=pre[idx].tolist(), ret_lo=ret_lo.tolist(), ret_hi=ret_hi.tolist())


@dataclass(frozen=True, slots=True)
class _Events:
    """The branches the stack pass looks at, one row each, as parallel Python lists.

    Only the branches that may change the function are here: calls, returns,
    interrupts, system calls, jumps into another function, and the branches whose
    source is in another function than the previous target (the run fell through) or
    that follow a gap. Plain lists, not numpy: the pass reads one row at a time.
    """

    branch: list[int]           # the branch's index k in the thread (it ends run k)
    op: list[int]               # _NONE, _CALL, _RET, _INT, _SYS or _JUMP
    from_ip: list[int]
    to_ip: list[int]
    from_func: list[int]        # function key of from_ip
    to_func: list[int]          # function key of to_ip
    to_start: list[bool]        # to_ip is the first byte of its function
    fell_through: list[bool]    # run k fell through into from_func (not after a gap)
    ret_lo: list[int]           # for a call: where a return out of its frame lands,
    ret_hi: list[int]           # ret_lo..ret_hi (after the call instruction); else 0

    def rows(self) -> zip[tuple[int, int, int, int, int, int, bool, bool, int, int]]:
        """Every row, as a tuple of the fields in the order above."""
        return zip(self.branch, self.op, self.from_ip, self.to_ip, self.from_func,
                   self.to_func, self.to_start, self.fell_through, self.ret_lo, self.ret_hi)


class _Walk:
    """The stack pass: frames, the stack, and the segments, as plain lists."""

    def __init__(self, gaps_at: dict[int, list[int]]) -> None:
        self.gaps_at = gaps_at
        self.f_func: list[int] = []
        self.f_depth: list[int] = []
        self.f_parent: list[int] = []
        self.f_open: list[int] = []
        self.f_close: list[int] = []
        self.seg_first: list[int] = []
        self.seg_frame: list[int] = []
        # the stack: frame ids, where a return out of each should land, and for a
        # signal handler's frame the address the thread was interrupted at (else -1)
        self.st: list[int] = []
        self.st_lo: list[int] = []
        self.st_hi: list[int] = []
        self.st_sig: list[int] = []
        self.roots: list[int] = []   # frames at the bottom level so far
        self.half = 0                # 1 while handling the point right after a gap

    def open(self, func: int, depth: int, parent: int, run: int) -> int:
        fid = len(self.f_func)
        self.f_func.append(func)
        self.f_depth.append(depth)
        self.f_parent.append(parent)
        self.f_open.append(2 * run + self.half)
        self.f_close.append(-1)
        return fid

    def push(self, func: int, run: int, lo: int, hi: int, sig: int) -> None:
        top = self.st[-1]
        fid = self.open(func, self.f_depth[top] + 1, top, run)
        self.st.append(fid)
        self.st_lo.append(lo)
        self.st_hi.append(hi)
        self.st_sig.append(sig)
        self.seg_first.append(run)
        self.seg_frame.append(fid)

    def cut(self, i: int, run: int) -> None:
        """Close the frames from stack position ``i`` up; the frame below goes on."""
        for fid in self.st[i:]:
            self.f_close[fid] = 2 * run + self.half
        del self.st[i:], self.st_lo[i:], self.st_hi[i:], self.st_sig[i:]
        self.seg_first.append(run)
        self.seg_frame.append(self.st[-1])

    def switch(self, func: int, run: int) -> None:
        """The top frame goes on in another function (tail call, fall-through, ...)."""
        old = self.st[-1]
        self.f_close[old] = 2 * run + self.half
        parent = self.f_parent[old]
        new = self.open(func, self.f_depth[old], parent, run)
        if parent < 0:
            self.roots.append(new)
        self.st[-1] = new
        self.seg_first.append(run)
        self.seg_frame.append(new)

    def lower(self, func: int, run: int) -> None:
        """A return out of the bottom frame: its caller was there all along, one lower."""
        old = self.st[-1]
        self.f_close[old] = 2 * run + self.half
        new = self.open(func, self.f_depth[old] - 1, -1, 0)
        for fid in self.roots:
            self.f_parent[fid] = new
        self.roots = [new]
        self.st[:] = [new]
        self.st_lo[:], self.st_hi[:], self.st_sig[:] = [1], [0], [-1]
        self.seg_first.append(run)
        self.seg_frame.append(new)

    def below(self, func: int) -> int:
        """Stack position of the nearest frame of ``func`` under the top, or -1."""
        st, f_func = self.st, self.f_func
        i = len(st) - 2
        while i >= 0 and f_func[st[i]] != func:
            i -= 1
        return i

    def resume(self, func: int, run: int) -> None:
        """Execution goes on in ``func`` after a gap."""
        if self.f_func[self.st[-1]] == func:
            self.seg_first.append(run)
            self.seg_frame.append(self.st[-1])
            return
        i = self.below(func)
        if i >= 0:
            self.cut(i + 1, run)
        else:
            self.push(func, run, 1, 0, -1)

    def gap(self, k: int) -> None:
        for g in self.gaps_at.get(k, ()):
            self.seg_first.append(k)
            self.seg_frame.append(-1 - g)

    def run(self, n: int, first_func: int, events: _Events) -> None:
        """The pass over a thread of ``n`` branches that starts in ``first_func``."""
        self.start(first_func)
        self.feed(events)
        self.finish(n)

    def start(self, first_func: int) -> None:
        """The gaps before the first branch, and the first frame, in ``first_func``."""
        self.gap(0)
        root = self.open(first_func, 0, -1, 0)
        self.roots.append(root)
        self.st[:], self.st_lo[:], self.st_hi[:], self.st_sig[:] = [root], [1], [0], [-1]
        self.seg_first.append(0)
        self.seg_frame.append(root)

    def finish(self, n: int) -> None:
        """The gaps after the last branch (branch ``n - 1``)."""
        if n in self.gaps_at:
            self.gap(n)

    def feed(self, events: _Events) -> None:
        """The pass over the next branches that may change the function."""
        st, st_lo, st_hi, st_sig = self.st, self.st_lo, self.st_hi, self.st_sig
        f_func, f_depth, f_parent = self.f_func, self.f_depth, self.f_parent
        f_open, f_close = self.f_open, self.f_close
        seg_first, seg_frame = self.seg_first, self.seg_frame
        gaps_at = self.gaps_at
        for k, op, source, target, from_func, to_func, to_start, fell, lo, hi in events.rows():
            if k in gaps_at and k:
                self.gap(k)
                self.half = 1
                self.resume(from_func, k)
                self.half = 0
            elif fell:                              # fell through, within run k
                self.half = 1
                self.switch(from_func, k)
                self.half = 0
            if op == _NONE:
                continue
            r = k + 1                               # the branch lands at the start of run r
            if op == _CALL:                         # self.push(), inlined: the hot path
                top = st[-1]
                fid = len(f_func)
                f_func.append(to_func)
                f_depth.append(f_depth[top] + 1)
                f_parent.append(top)
                f_open.append(2 * r)
                f_close.append(-1)
                st.append(fid)
                st_lo.append(lo)
                st_hi.append(hi)
                st_sig.append(-1)
                seg_first.append(r)
                seg_frame.append(fid)
            elif op == _RET:
                if len(st) > 1 and st_lo[-1] <= target <= st_hi[-1] and f_func[st[-2]] == to_func:
                    f_close[st.pop()] = 2 * r       # the usual return, inlined
                    del st_lo[-1], st_hi[-1], st_sig[-1]
                    seg_first.append(r)
                    seg_frame.append(st[-1])
                    continue
                # the frame whose return address it lands on, in the function it lands in
                i = len(st) - 1
                while i > 0 and not (st_lo[i] <= target <= st_hi[i]
                                     and f_func[st[i - 1]] == to_func):
                    i -= 1
                if i > 0:
                    self.cut(i, r)
                    continue
                i = self.below(to_func)
                if i >= 0:
                    self.cut(i + 1, r)
                elif st_sig[-1] >= 0:
                    self.switch(to_func, r)         # a handler returns to the restorer
                elif len(st) == 1:
                    self.lower(to_func, r)
                else:
                    f_close[st[-1]] = 2 * r          # back to a caller we never saw
                    del st[-1], st_lo[-1], st_hi[-1], st_sig[-1]
                    self.switch(to_func, r)
            elif op == _INT:
                self.push(to_func, r, 1, 0, source)  # remembers where the thread was
            else:
                if op == _SYS:
                    i = len(st) - 1
                    while i > 0 and st_sig[i] != target:
                        i -= 1
                    if i > 0:                       # sigreturn
                        self.cut(i, r)
                        if f_func[st[-1]] != to_func:
                            self.seg_first.pop()
                            self.seg_frame.pop()
                            self.switch(to_func, r)
                        continue
                if f_func[st[-1]] == to_func:
                    continue
                i = -1 if to_start else self.below(to_func)
                if i >= 0:
                    self.cut(i + 1, r)               # longjmp
                else:
                    self.switch(to_func, r)             # tail call, or a switch
