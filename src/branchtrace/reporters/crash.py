"""The crash report: how the program ended and the last branches it took.

Modelled on ``perf script -F ip,addr,flags,sym`` (one line per branch, ``from => to``)
and GDB's call history. A pure function of a trace, written to a stream, in text or JSON.
The faulting instruction is disassembled from the binary on disk only while it is the
one traced; otherwise the report says why not (``fault_instruction_note`` in JSON).
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np

from ..model import BranchKind, empty_branches
from ..trace import Trace
from .crash_fold import fold
from .crash_own import own_doc, write_own_text
from .crash_stack import stack_doc, write_stack_text

#: Branches of the thread the last-branches list looks through for loops to fold.
FOLD_WINDOW = 65536


@dataclass(frozen=True)
class _Loc:
    address: int
    function: str | None
    offset: int
    module: str | None
    file: str | None
    line: int | None

    def as_text(self) -> str:
        where = f"{self.function}+{self.offset:#x}" if self.function else f"{self.address:#x}"
        if self.module:
            where += f" ({self.module.rsplit('/', 1)[-1]})"
        if self.file and self.line:
            where += f" {self.file.rsplit('/', 1)[-1]}:{self.line}"
        return where

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address, "hex": f"{self.address:#x}",
            "function": self.function, "offset": self.offset if self.function else None,
            "module": self.module, "file": self.file, "line": self.line,
        }


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def signal_description(number: int) -> str:
    return signal.strsignal(number) or signal_name(number)


def _locate(trace: Trace, addresses: np.ndarray) -> list[_Loc]:
    sym = trace.symbolizer
    out = []
    for address in addresses.tolist():
        loc = sym.describe(int(address))
        out.append(_Loc(int(address), loc.function, loc.offset, loc.module, loc.file, loc.line))
    return out


def _instruction_at(trace: Trace, address: int) -> tuple[str | None, str]:
    """The instruction at ``address``, disassembled from the file on disk, and a note
    ("" when none) when the file cannot be used (it changed since the trace, ...)."""
    from ..isa import classify
    from ..symbols.images import module_image

    found = trace.symbolizer.resolve(np.array([address], dtype=np.uint64))
    module = int(found.module[0])
    if module < 0:
        return None, ""
    loaded = module_image(trace.symbolizer.modules[module])
    if loaded.image is None:
        return None, f"cannot disassemble: {loaded.why()}"
    code = loaded.image.read_vaddr(int(found.vaddr[0]), 16)
    insn = classify(code, address) if code else None
    return (insn.text if insn else None), ""


def crash_thread(trace: Trace) -> int | None:
    """The thread a report shows by default: the one that took the fatal signal, else
    the main thread, else the first."""
    if trace.exit.tid is not None and trace.exit.tid in trace.threads:
        return trace.exit.tid
    if trace.pid in trace.threads:
        return trace.pid
    return next(iter(trace.threads), None)


def build(trace: Trace, last: int = 16, tid: int | None = None,
          own: Sequence[str] = (), recorded: Mapping[int, int] | None = None
          ) -> dict[str, Any]:
    """The report as plain data (what ``--format json`` prints); ``own``: modules that
    count as the program's own besides its executable (reporters/crash_own.py);
    ``recorded``: the branches of each thread, when ``trace`` holds only the last ones
    (default: the length of each thread's array)."""
    tid = tid if tid is not None else crash_thread(trace)
    counts = recorded if recorded is not None else {t: len(a) for t, a in trace.threads.items()}
    window = trace.branches(tid)[-FOLD_WINDOW:] if tid is not None and last > 0 \
        else empty_branches()
    # loops folded: --last counts lines shown; each line is the newest run of its branch
    folds = fold(window, last)
    shown: list[tuple[int, int, int]] = []          # (index in window, times, period)
    for f in folds:
        newest = f.first + (f.times - 1) * f.period
        shown += [(newest + j, f.times, f.period) for j in range(f.period)]
    at = np.array([i for i, _, _ in shown], dtype=np.int64)
    branches = window[at]
    covered = len(window) - folds[0].first if folds else 0
    froms = _locate(trace, branches["from_ip"])
    tos = _locate(trace, branches["to_ip"])
    ex = trace.exit
    exit_doc: dict[str, Any] = {"status": ex.status, "code": ex.code}
    if ex.signal is not None:
        exit_doc["signal"] = {"number": ex.signal, "name": signal_name(ex.signal),
                              "description": signal_description(ex.signal)}
        exit_doc["core_dumped"] = ex.core_dumped
    if ex.held:
        exit_doc["held"] = True
    if ex.fault_address is not None:
        exit_doc["fault_address"] = ex.fault_address
    if ex.fault_pc is not None:
        exit_doc["fault_pc"] = _locate(trace, np.array([ex.fault_pc], dtype=np.uint64))[0].as_json()
        exit_doc["fault_instruction"], note = _instruction_at(trace, ex.fault_pc)
        if note:
            exit_doc["fault_instruction_note"] = note
    n = len(window)
    doc: dict[str, Any] = {
        "program": list(trace.argv) or _argv_of(trace), "pid": trace.pid, "backend": trace.backend,
        "mode": trace.mode, "exit": exit_doc, "thread": tid,
        "threads": {str(t): {"recorded": counts[t], "written": trace.written.get(t, counts[t]),
                             "lost": trace.lost.get(t, 0)} for t in trace.threads},
        "branches": [
            {"index": i - n, "kind": BranchKind(int(k)).label, "thread": tid,
             "from": f.as_json(), "to": t.as_json(),
             **({"times": times, "loop": period} if times > 1 else {})}
            for (i, times, period), k, f, t in zip(shown, branches["kind"].tolist(), froms, tos)
        ],
        "branches_covered": covered,
        "gaps": [{"thread": g.tid, "index": g.index, "count": g.count,
                  "reason": g.reason} for g in trace.gaps],
        "notes": list(trace.notes),
    }
    doc.update(stack_doc(trace, tid))
    doc.update(own_doc(trace, tid, window, doc["stack"], doc["replayed_stack"], own))
    return doc


def _argv_of(trace: Trace) -> list[str]:
    """The argv the process table knows (an attached process's, read at attach)."""
    return next((list(p.argv) for p in trace.processes if p.pid == trace.pid), [])


def _headline(doc: dict[str, Any]) -> str:
    program = " ".join(doc["program"]) or f"pid {doc['pid']}"
    ex = doc["exit"]
    if ex["status"] == "signaled":
        sig = ex["signal"]
        core = " (core dumped)" if ex.get("core_dumped") else ""
        if ex.get("held"):
            return (f"{program} (pid {doc['pid']}) received {sig['name']} "
                    f"({sig['description']}): stopped before it was delivered")
        return f"{program} (pid {doc['pid']}) was killed by {sig['name']} ({sig['description']}){core}"
    if ex["status"] == "exited":
        return f"{program} (pid {doc['pid']}) exited with status {ex['code']}"
    if ex["status"] == "snapshot":
        snap = doc.get("snapshot") or {}
        what = f"snapshot {snap['number']} of " if snap.get("number") else "snapshot of "
        why = f": {snap['reason']}" if snap.get("reason") else ""
        return f"{what}{program} (pid {doc['pid']}), thread {doc['thread']}{why}; it went on"
    return f"{program} (pid {doc['pid']}): {ex['status']}; it keeps running without us"


def write_text(doc: dict[str, Any], out: IO[str], columns: int | None = None) -> None:
    """The report as text. On a terminal (or given ``columns``) long function names
    (C++'s run to hundreds of characters) are elided in the middle so that lines fit
    its width; on a file or a pipe, and in JSON, every name is whole."""
    _loc_text = _texter(_name_limit(out, columns))
    ex = doc["exit"]
    out.write(f"branchtrace: {_headline(doc)}\n")
    if "fault_address" in ex:
        out.write(f"  fault address: {ex['fault_address']:#x}\n")
    if "fault_pc" in ex:
        pc = ex["fault_pc"]
        label = "stopped at:" if ex["status"] == "snapshot" else "faulted at:"
        out.write(f"  {label:<14} {pc['hex']} {_loc_text(pc)}\n")
        if ex.get("fault_instruction"):
            out.write(f"  instruction:   {ex['fault_instruction']}\n")
        elif ex.get("fault_instruction_note"):
            out.write(f"  instruction:   ({ex['fault_instruction_note']})\n")
    tid = doc["thread"]
    if tid is None:
        out.write("  no thread was recorded\n")
    else:
        info = doc["threads"].get(str(tid), {})
        lost = info.get("lost", 0)
        extra = f", {lost} older ones lost" if lost else ""
        out.write(f"  thread {tid}: {info.get('written', 0)} branches recorded{extra}"
                  f" [{doc['backend']}, {doc['mode']} mode]\n")
        branches = doc["branches"]
        covered = doc.get("branches_covered", len(branches))
        folded = f" (loops folded: {covered} branches)" if covered != len(branches) else ""
        out.write(f"\nLast {len(branches)} branches of thread {tid}{folded}, oldest first:\n")
        width = max((len(_loc_text(b["from"])) for b in branches), default=0)
        for k, b in enumerate(branches):
            times, loop = b.get("times", 1), b.get("loop", 1)
            mark = f"×{times}" if times > 1 and loop == 1 else ""
            if times > 1 and loop > 1 and (k == 0 or branches[k - 1].get("loop") != loop
                                           or branches[k - 1]["index"] != b["index"] - 1):
                span = f"{b['index'] - loop * (times - 1)}..{b['index'] + loop - 1}"
                out.write(f"  {span:>10}  ×{times} a loop of {loop} branches:\n")
            indent = "    " if times > 1 and loop > 1 else ""
            out.write(f"  {indent}{b['index']:>4} {mark:>5} {b['kind']:<13} {b['from']['hex']:>14} "
                      f"{_loc_text(b['from']):<{width}}  =>  {b['to']['hex']} {_loc_text(b['to'])}\n")
    write_own_text(doc, out, _loc_text)
    write_stack_text(doc, out, _loc_text)
    for gap in doc["gaps"]:
        out.write(f"  gap: thread {gap['thread']} lost {gap['count']} records ({gap['reason']})\n")
    for note in doc["notes"]:
        out.write(f"  note: {note}\n")


def _name_limit(out: IO[str], columns: int | None) -> int | None:
    if columns is None:
        try:
            if not out.isatty():
                return None
            columns = shutil.get_terminal_size().columns
        except (AttributeError, ValueError, OSError):
            return None
    # a branch line holds two locations (a name, and ~35 characters of offset, module,
    # file and line each) besides ~60 of index, kind and addresses; names stay readable
    return max(40, (columns - 130) // 2)


def elide(name: str, limit: int | None) -> str:
    """``name`` cut in the middle to ``limit`` characters (its start and end kept)."""
    if limit is None or len(name) <= limit:
        return name
    head = (limit - 1) * 2 // 3
    return name[:head] + "…" + name[len(name) - (limit - 1 - head):]


def _texter(limit: int | None) -> Callable[[dict[str, Any]], str]:
    def text(loc: dict[str, Any]) -> str:
        if limit is not None and loc.get("function"):
            loc = dict(loc, function=elide(loc["function"], limit))
        return _loc_text(loc)
    return text


def _loc_text(loc: dict[str, Any]) -> str:
    return _Loc(loc["address"], loc["function"], loc["offset"] or 0, loc["module"],
                loc["file"], loc["line"]).as_text()


def write_json(doc: dict[str, Any], out: IO[str]) -> None:
    json.dump(doc, out, indent=2)
    out.write("\n")


def render(trace: Trace, out: IO[str], *, last: int = 16, fmt: str = "text",
           tid: int | None = None, own: Sequence[str] = (),
           recorded: Mapping[int, int] | None = None) -> None:
    """Write the crash (or exit) report of ``trace`` to ``out`` (``own``, ``recorded``:
    see :func:`build`)."""
    doc = build(trace, last=last, tid=tid, own=own, recorded=recorded)
    if fmt == "json":
        write_json(doc, out)
    else:
        write_text(doc, out)


SIGPIPE = 13


def crashed(trace: Trace, *, quiet_pipes: bool = False) -> list[Trace]:
    """The processes of ``trace`` that died of a signal, each as its own trace;
    ``quiet_pipes``: not a child killed by SIGPIPE (a pipeline's writer whose reader
    ended first, ``yes | head``: a shell says nothing of it either)."""
    first = trace.processes[0].pid if trace.processes else None
    return [trace.for_pid(p.pid) for p in trace.processes if p.exit.status == "signaled"
            and not (quiet_pipes and p.pid != first and p.exit.signal == SIGPIPE)]


def to_report(trace: Trace, *, first: bool = True, quiet_pipes: bool = False) -> list[Trace]:
    """What a crash report of ``trace`` covers: every process that died of a signal
    (``quiet_pipes``: see :func:`crashed`), and the first process too when ``first`` (or
    when none died), first first."""
    out = crashed(trace, quiet_pipes=quiet_pipes)
    if (first or not out) and not any(t.pid == trace.processes[0].pid for t in out):
        out.insert(0, trace.for_pid(trace.processes[0].pid))
    return out


def render_all(traces: list[Trace], out: IO[str], *, last: int = 16, fmt: str = "text",
               tid: int | None = None, own: Sequence[str] = (),
               recorded: Mapping[int, int] | None = None) -> None:
    """The reports of several processes: text one after the other, each headed with its
    pid and argv; JSON one document, ``{"reports": [...]}`` when there are several."""
    if len(traces) == 1:
        render(traces[0], out, last=last, fmt=fmt, tid=tid, own=own, recorded=recorded)
        return
    docs = [build(t, last=last, tid=tid, own=own, recorded=recorded) for t in traces]
    if fmt == "json":
        write_json({"reports": docs}, out)
        return
    for k, doc in enumerate(docs):
        if k:
            out.write("\n")
        write_text(doc, out)
