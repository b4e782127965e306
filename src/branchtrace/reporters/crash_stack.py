"""The call stack part of the crash report (analysis/stack.py): the stack unwound from
the copy the backend took at the fatal signal, as GDB's ``bt`` prints it, with the source
line of each frame when the file is there, and the stack replayed from the trace's calls
and returns beside it: where each frame was entered, and where the two disagree.

JSON (keys of the report): ``stack`` (unwound, innermost first: each frame a location,
as the report's branches have them, plus ``source``, the text of its line), ``stack_end``
(why the walk stopped; ``null`` when no stack was copied), ``replayed_stack`` (innermost
first: function, the address the thread was at in the frame, ``entered``, the index of
the branch that entered it counted from the end as the branches' ``index`` is, or
``null`` when it was entered before the first recorded branch), ``stack_disagreements``
(the frame numbers where the two name different functions).
"""

from __future__ import annotations

import os
from typing import IO, Any

import numpy as np

from ..analysis.stack import StackFrame, disagreements, replayed, unwound
from ..trace import Trace


def stack_doc(trace: Trace, tid: int | None) -> dict[str, Any]:
    """The report's stack keys for thread ``tid`` (the crashed one: the unwound stack is
    that of the thread that took the fatal signal)."""
    u = unwound(trace) if tid is not None and tid == trace.exit.tid else None
    r: tuple[StackFrame, ...] = ()
    n = 0
    if tid is not None and tid in trace.threads:
        n = len(trace.threads[tid])
        r = replayed(trace, tid, trace.exit.fault_pc if tid == trace.exit.tid else None)
    return {
        "stack": [] if u is None else _frames(trace, u.frames, unwound_=True),
        "stack_end": None if u is None else u.end,
        "replayed_stack": [dict(f, entered=(None if e is None else e - n))
                           for f, e in zip(_frames(trace, r, unwound_=False),
                                           (x.entered for x in r))],
        "stack_disagreements": [] if u is None else disagreements(u.frames, r),
    }


def _frames(trace: Trace, frames: tuple[StackFrame, ...], unwound_: bool
            ) -> list[dict[str, Any]]:
    """Locations of the frames: a return address is looked up one byte back (the
    call), as GDB does, but shown as it is."""
    if not frames:
        return []
    looked = [f.pc - 1 if unwound_ and i else f.pc for i, f in enumerate(frames)]
    res = trace.symbolizer.resolve(np.array(looked, dtype=np.uint64))
    out = []
    for i, (frame, loc) in enumerate(zip(frames, res.locations())):
        if not unwound_ and frame.function != loc.function:
            # the replay knows the frame's function; where in it the thread was is lost
            # (the frame left by a jump the trace does not have)
            lost: dict[str, Any] = {"address": None, "hex": "?", "function": frame.function,
                                    "offset": None, "module": None, "file": None,
                                    "line": None, "source": None}
            out.append(lost)
            continue
        out.append({
            "address": frame.pc, "hex": f"{frame.pc:#x}", "function": loc.function,
            "offset": (loc.offset + (1 if unwound_ and i else 0)) if loc.function else None,
            "module": loc.module, "file": loc.file, "line": loc.line,
            "source": _source_line(loc.file, loc.line),
        })
    return out


_SOURCES: dict[str, list[str] | None] = {}


def _source_line(path: str | None, line: int | None) -> str | None:
    """The text of ``line`` of ``path`` when it is a regular file here."""
    if not path or not line:
        return None
    if path not in _SOURCES:
        from ..symbols.elf import read_regular
        try:
            _SOURCES[path] = read_regular(path).decode("utf-8", "replace").splitlines() \
                if os.path.isfile(path) else None
        except OSError:
            _SOURCES[path] = None
    lines = _SOURCES[path]
    return lines[line - 1].strip() if lines is not None and 0 < line <= len(lines) else None


def write_stack_text(doc: dict[str, Any], out: IO[str], loc_text: Any) -> None:
    """The stack as text: the unwound frames (``#k``), each with its source line, and
    the replayed one where it adds something (where a frame was entered) or disagrees."""
    stack, replay = doc.get("stack", []), doc.get("replayed_stack", [])
    wrong = set(doc.get("stack_disagreements", []))
    if not stack and not replay:
        return
    if stack:
        agree = "the calls in the trace agree" if not wrong else \
            f"the calls in the trace disagree at frame(s) {', '.join(f'#{k}' for k in sorted(wrong))}"
        out.write(f"\nCall stack (unwound from its stack; {agree}):\n")
        for k, last in _groups(stack, wrong):
            frame = stack[k]
            if last > k:                      # a recursion: the same frame, folded
                out.write(f"  #{k}..#{last} ×{last - k + 1} {frame['hex']:>14} "
                          f"{loc_text(frame)}\n")
                continue
            entered = ""
            if k < len(replay) and replay[k]["entered"] is not None and k not in wrong:
                entered = f"  [entered at branch {replay[k]['entered']}]"
            out.write(f"  #{k:<3} {frame['hex']:>14} {loc_text(frame)}{entered}\n")
            if frame.get("source"):
                out.write(f"{'':>22}{frame['source']}\n")
            if k in wrong:
                r = replay[k]
                out.write(f"{'':>8}!! the trace's calls say {r['function'] or r['hex']} here "
                          f"(a smashed stack?)\n")
        if doc.get("stack_end") and not doc["stack_end"].startswith("outermost"):
            more = f"; the calls in the trace have {len(replay)} frames open" \
                if len(replay) > len(stack) else ""
            out.write(f"  (the walk stopped: {doc['stack_end']}{more})\n")
    if replay and (not stack or wrong):
        out.write("\nCall stack replayed from the trace's calls and returns:\n")
        for k, last in _groups(replay, set()):
            frame = replay[k]
            if last > k:
                out.write(f"  #{k}..#{last} ×{last - k + 1} {frame['hex']:>14} "
                          f"{loc_text(frame)}  [entered at branches {replay[last]['entered']}"
                          f"..{frame['entered']}]\n")
                continue
            entered = f"entered at branch {frame['entered']}" if frame["entered"] is not None \
                else "entered before the first recorded branch"
            where = loc_text(frame) if frame["address"] is not None \
                else f"{frame['function'] or '??'} (where in it is not recorded)"
            out.write(f"  #{k:<3} {frame['hex']:>14} {where}  [{entered}]\n")


def _groups(frames: list[dict[str, Any]], alone: set[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of frames that are the same call (address and function:
    a recursion), a frame in ``alone`` on its own; the first and last frames of the
    stack are never folded into a run."""
    out: list[tuple[int, int]] = []
    k = 0
    while k < len(frames):
        last = k
        while (0 < k and last + 1 < len(frames) - 1 and last + 1 not in alone
               and k not in alone and frames[last + 1]["hex"] == frames[k]["hex"]
               and frames[last + 1]["function"] == frames[k]["function"]):
            last += 1
        if last - k < 2:                     # two alike are shown as they are
            last = k
        out.append((k, last))
        k = last + 1
    return out
