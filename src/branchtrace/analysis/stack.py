"""The call stack of a thread at its end, two ways, and where they disagree.

* **Unwound**: from the registers and the copy of the stack the backend took at the
  fatal signal (:class:`~branchtrace.model.StackSnapshot`, symbols/unwind.py), as GDB's
  ``bt`` shows it. It needs the stack to be intact.
* **Replayed**: from the trace's own calls and returns (analysis/callstack.py): the
  frames still open after the last branch. It works when the stack is smashed, and it
  says where each frame was entered; it knows only what the recorded branches show (a
  ring keeps the newest ones: frames entered before them are there, but not where).

Both lists are innermost first. :func:`disagreements` names the frames where they
differ: a frame the stack shows that the trace never entered (or the reverse) means the
stack or the return addresses on it were overwritten, itself a finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..symbols.unwind import unwind_snapshot
from ..trace import Trace
from .callstack import call_trace

@dataclass(frozen=True, slots=True)
class StackFrame:
    """One frame: its function (None when no symbol names it), the address the thread
    was at in it (the innermost: the faulting pc; the others: the call into the frame
    above, or, unwound, the return address), and for a replayed frame the index of the
    branch that entered it (None: entered before the first recorded branch)."""

    function: str | None
    pc: int
    entered: int | None = None
    in_module: bool = True        # the pc lies in a mapped module (not garbage)


@dataclass(frozen=True, slots=True)
class Unwound:
    frames: tuple[StackFrame, ...]
    end: str                       # why the walk stopped (symbols/unwind.py)


def unwound(trace: Trace) -> Unwound | None:
    """The unwound stack of the thread that took the fatal signal, or None when the
    backend recorded no stack (no fatal signal, an older trace file)."""
    snapshot = trace.exit.stack
    if snapshot is None:
        return None
    stack = unwind_snapshot(trace.modules, snapshot)
    looked = [f.pc if i == 0 else f.pc - 1 for i, f in enumerate(stack.frames)]
    names = _names(trace, looked)
    mapped = trace.symbolizer.module_indices(np.array(looked, dtype=np.uint64)) >= 0 \
        if looked else np.zeros(0, dtype=bool)
    return Unwound(tuple(StackFrame(n, f.pc, None, bool(m))
                         for n, f, m in zip(names, stack.frames, mapped)), stack.end)


def replayed(trace: Trace, tid: int, pc: int | None = None) -> tuple[StackFrame, ...]:
    """The frames of thread ``tid`` still open after its last recorded branch, innermost
    first; ``pc``, where the thread was at the end (the fault pc), names the innermost
    frame's address (else the target of the last branch)."""
    ct = call_trace(trace, tid)
    if ct.n == 0 or not len(ct.seg_frame):
        return ()
    branches = trace.branches(tid)
    f = int(ct.seg_frame[-1])
    if f < 0:                       # the thread's record ends in a gap
        return ()
    chain: list[int] = []
    while f >= 0:
        chain.append(f)
        f = int(ct.frame_parent[f])
    from_keys = ct.functions.keys(branches["from_ip"]).key
    frames: list[StackFrame] = []
    here: int | None = pc if pc is not None else int(branches["to_ip"][-1])
    inner_entered: int | None = None
    for frame in chain:
        opened = int(ct.frame_open[frame])
        entered = opened // 2 - 1 if opened > 0 else None
        key = int(ct.frame_function[frame])
        if inner_entered is not None:
            # where this frame left for the one above: its last branch before that one
            # was entered (the call; or a jump, when the frame above came by tail calls)
            lo = entered if entered is not None else 0
            mine = np.flatnonzero(from_keys[lo:inner_entered + 1] == key)
            here = int(branches["from_ip"][lo + int(mine[-1])]) if len(mine) else None
        name = ct.functions.name(key) or None
        if name is not None and name.startswith(("??", "0x")):
            name = None                     # code no symbol names ("?? (libfoo.so)")
        frames.append(StackFrame(name, here or 0, entered))
        if entered is None:
            break
        inner_entered = entered
    return tuple(frames)


def disagreements(unwound: tuple[StackFrame, ...], replayed: tuple[StackFrame, ...]
                  ) -> list[int]:
    """Indices (innermost = 0) of unwound frames that name another function than the
    replayed frame beside them, as far as the replayed stack knows its frames (up to
    its first frame entered before the recording). Frames no symbol names (stripped
    code) say nothing: the unwinder may see two where the replay sees one, so the two
    lists are walked side by side, an unnamed frame on either side passed over."""
    out = []
    i = j = 0
    while i < len(unwound) and j < len(replayed):
        u, r = unwound[i], replayed[j]
        u_unnamed = u.function is None and u.in_module      # garbage is not unnamed
        if u_unnamed or r.function is None:
            i += u_unnamed
            j += r.function is None
            if not u_unnamed and u.function is None:        # garbage beside unnamed
                out.append(i)
                i += 1
            continue
        if u.function != r.function:
            out.append(i)
        if r.entered is None:
            break
        i += 1
        j += 1
    return out


def _names(trace: Trace, addresses: list[int]) -> list[str | None]:
    if not addresses:
        return []
    res = trace.symbolizer.resolve(np.array(addresses, dtype=np.uint64))
    return [loc.function for loc in res.locations()]
