"""The program's own last steps, for a crash in someone else's code.

A crash inside libc, libstdc++, the dynamic loader or the unwinder (abort, a failed
assert, an uncaught throw, strlen(NULL)) shows, in its last branches, only that code.
What the reader needs is the program's part: the innermost frame of the call stack that
is in the program's own code (the call that led to the crash, with its source line:
the assert's line, the function that threw), and the last calls the program's code made
into other modules.

The program's own modules are its executable (the module that is an ELF program: an
ET_EXEC file, or a PIE naming an interpreter), plus any given with ``--own NAME,...``
(a module's base name or path, e.g. a library of the program's own).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..symbols.images import module_image
from ..trace import Trace

#: How many of the program's last calls into other modules the report lists.
LAST_CALLS = 5


def own_modules(trace: Trace, extra: Sequence[str] = ()) -> list[int]:
    """Indices into ``trace.symbolizer.modules`` of the program's own modules: the
    program the process runs (after execs, the maps also hold the images it ran
    before: the one its argv names is kept when it is there) and those ``extra`` names."""
    named, programs = [], []
    for i, m in enumerate(trace.symbolizer.modules):
        if m.name in extra or m.path in extra:
            named.append(i)
            continue
        image = module_image(m).image
        if image is not None and image.is_program:
            programs.append(i)
    argv = (trace.processes[0].argv if trace.processes else ()) or trace.argv
    argv0 = argv[0] if argv else ""          # its last exec's, when it exec'd
    names = {os.path.basename(argv0), os.path.basename(os.path.realpath(argv0))} - {""}
    current = [i for i in programs if trace.symbolizer.modules[i].name in names]
    return sorted(named + (current or programs))


def own_doc(trace: Trace, tid: int | None, window: np.ndarray, stack: list[dict[str, Any]],
            replay: list[dict[str, Any]], extra: Sequence[str] = ()) -> dict[str, Any]:
    """The report's ``own`` key: None when the fault is in the program's own code (or
    nothing is known), else ``{"modules", "frame", "calls"}``: the innermost frame of
    the stack (unwound, else replayed) in an own module, and the last calls from own
    code into other modules (each a branch as the report's, with its index)."""
    fault = trace.exit.fault_pc
    if tid is None or fault is None or tid != trace.exit.tid:
        return {"own": None}
    sym = trace.symbolizer
    own = set(own_modules(trace, extra))
    if not own or int(sym.module_indices(np.array([fault], dtype=np.uint64))[0]) in own:
        return {"own": None}
    paths = {sym.modules[i].path for i in own}
    frame, which = _own_frame(stack, paths), "stack"
    if frame is None:
        frame, which = _own_frame(replay, paths), "replayed_stack"
    calls: list[dict[str, Any]] = []
    if len(window):
        # control leaving the program's modules: a call out of them, or the jump of
        # one of their PLT stubs (then the call into the stub is the program's step)
        mf = sym.module_indices(window["from_ip"])
        mt = sym.module_indices(window["to_ip"])
        own_arr = np.array(sorted(own), dtype=np.int32)
        leaving = np.flatnonzero(np.isin(mf, own_arr) & ~np.isin(mt, own_arr))
        n = len(window)
        steps: list[tuple[int, int]] = []           # (index of the call, of the exit)
        for i in leaving.tolist():
            at = i      # back through the PLT (a stub, then PLT0 on a lazy first call)
            while at > 0 and _in_plt(sym.describe(int(window["from_ip"][at])).function):
                at -= 1
            if int(window["kind"][at]) in (1, 6) and not (steps and steps[-1][0] == at):
                steps.append((at, i))
        for at, i in steps[-LAST_CALLS:]:
            f = sym.describe(int(window["from_ip"][at]))
            t = sym.describe(int(window["to_ip"][at]))     # the stub names the callee
            calls.append({"index": at - n, "from": _loc(f), "to": _loc(t)})
    return {"own": {"modules": sorted(paths), "frame": frame, "frame_of": which,
                    "calls": calls}}


def _in_plt(function: str | None) -> bool:
    return function is not None and (function.endswith("@plt") or function == ".plt")


def _own_frame(frames: list[dict[str, Any]], paths: set[str]) -> int | None:
    return next((k for k, f in enumerate(frames) if f.get("module") in paths), None)


def _loc(loc: Any) -> dict[str, Any]:
    return {"address": loc.address, "hex": f"{loc.address:#x}", "function": loc.function,
            "offset": loc.offset if loc.function else None, "module": loc.module,
            "file": loc.file, "line": loc.line}


def write_own_text(doc: dict[str, Any], out: Any, loc_text: Any) -> None:
    own = doc.get("own")
    frames = doc.get(own.get("frame_of", "stack")) or [] if own else []
    if own and own["frame"] is not None and own["frame"] == len(frames) - 1 \
            and not own["calls"]:
        return          # only the outermost frame (_start): nothing to lead to the cause
    if not own or (own["frame"] is None and not own["calls"]):
        return
    names = ", ".join(p.rsplit("/", 1)[-1] for p in own["modules"])
    out.write(f"\nThe program's own last steps ({names}; --own adds modules):\n")
    k = own["frame"]
    if k is not None and k < len(frames):
        f = frames[k]
        whose = "" if own.get("frame_of") == "stack" else " of the replayed stack"
        out.write(f"  its innermost frame{whose}, #{k}: {f['hex']} {loc_text(f)}\n")
        if f.get("source"):
            out.write(f"{'':>6}{f['source']}\n")
    if own["calls"]:
        out.write("  its last calls out of its own code:\n")
    for c in own["calls"]:
        out.write(f"  {c['index']:>6}  call {loc_text(c['from'])}  =>  {loc_text(c['to'])}\n")
