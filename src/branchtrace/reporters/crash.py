"""The crash report: how the program ended and the last branches it took.

Modelled on ``perf script -F ip,addr,flags,sym`` (one line per branch, ``from => to``)
and GDB's call history. A pure function of a trace, written to a stream, in text or JSON.
The faulting instruction is disassembled from the binary on disk only while it is the
one traced; otherwise the report says why not (``fault_instruction_note`` in JSON).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from ..model import BranchKind, empty_branches
from ..trace import Trace


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
          recorded: Mapping[int, int] | None = None) -> dict[str, Any]:
    """The report as plain data (what ``--format json`` prints). ``recorded``: the
    branches of each thread, when ``trace`` holds only the last ones (default: the
    length of each thread's array)."""
    tid = tid if tid is not None else crash_thread(trace)
    counts = recorded if recorded is not None else {t: len(a) for t, a in trace.threads.items()}
    branches = trace.branches(tid)[-last:] if tid is not None and last > 0 else empty_branches()
    froms = _locate(trace, branches["from_ip"])
    tos = _locate(trace, branches["to_ip"])
    ex = trace.exit
    exit_doc: dict[str, Any] = {"status": ex.status, "code": ex.code}
    if ex.signal is not None:
        exit_doc["signal"] = {"number": ex.signal, "name": signal_name(ex.signal),
                              "description": signal_description(ex.signal)}
        exit_doc["core_dumped"] = ex.core_dumped
    if ex.fault_address is not None:
        exit_doc["fault_address"] = ex.fault_address
    if ex.fault_pc is not None:
        exit_doc["fault_pc"] = _locate(trace, np.array([ex.fault_pc], dtype=np.uint64))[0].as_json()
        exit_doc["fault_instruction"], note = _instruction_at(trace, ex.fault_pc)
        if note:
            exit_doc["fault_instruction_note"] = note
    n = len(branches)
    return {
        "program": list(trace.argv) or _argv_of(trace), "pid": trace.pid, "backend": trace.backend,
        "mode": trace.mode, "exit": exit_doc, "thread": tid,
        "threads": {str(t): {"recorded": counts[t], "written": trace.written.get(t, counts[t]),
                             "lost": trace.lost.get(t, 0)} for t in trace.threads},
        "branches": [
            {"index": i - n, "kind": BranchKind(int(k)).label, "thread": tid,
             "from": f.as_json(), "to": t.as_json()}
            for i, (k, f, t) in enumerate(zip(branches["kind"].tolist(), froms, tos))
        ],
        "gaps": [{"thread": g.tid, "index": g.index, "count": g.count, "reason": g.reason}
                 for g in trace.gaps],
        "notes": list(trace.notes),
    }


def _argv_of(trace: Trace) -> list[str]:
    """The argv the process table knows (an attached process's, read at attach)."""
    return next((list(p.argv) for p in trace.processes if p.pid == trace.pid), [])


def _headline(doc: dict[str, Any]) -> str:
    program = " ".join(doc["program"]) or f"pid {doc['pid']}"
    ex = doc["exit"]
    if ex["status"] == "signaled":
        sig = ex["signal"]
        core = " (core dumped)" if ex.get("core_dumped") else ""
        return f"{program} (pid {doc['pid']}) was killed by {sig['name']} ({sig['description']}){core}"
    if ex["status"] == "exited":
        return f"{program} (pid {doc['pid']}) exited with status {ex['code']}"
    return f"{program} (pid {doc['pid']}): {ex['status']}; it keeps running without us"


def write_text(doc: dict[str, Any], out: IO[str]) -> None:
    ex = doc["exit"]
    out.write(f"branchtrace: {_headline(doc)}\n")
    if "fault_address" in ex:
        out.write(f"  fault address: {ex['fault_address']:#x}\n")
    if "fault_pc" in ex:
        pc = ex["fault_pc"]
        out.write(f"  faulted at:    {pc['hex']} {_loc_text(pc)}\n")
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
        out.write(f"\nLast {len(branches)} branches of thread {tid}, oldest first:\n")
        width = max((len(_loc_text(b["from"])) for b in branches), default=0)
        for b in branches:
            out.write(f"  {b['index']:>4}  {b['kind']:<13} {b['from']['hex']:>14} "
                      f"{_loc_text(b['from']):<{width}}  =>  {b['to']['hex']} {_loc_text(b['to'])}\n")
    for gap in doc["gaps"]:
        out.write(f"  gap: thread {gap['thread']} lost {gap['count']} records ({gap['reason']})\n")
    for note in doc["notes"]:
        out.write(f"  note: {note}\n")


def _loc_text(loc: dict[str, Any]) -> str:
    return _Loc(loc["address"], loc["function"], loc["offset"] or 0, loc["module"],
                loc["file"], loc["line"]).as_text()


def write_json(doc: dict[str, Any], out: IO[str]) -> None:
    json.dump(doc, out, indent=2)
    out.write("\n")


def render(trace: Trace, out: IO[str], *, last: int = 16, fmt: str = "text",
           tid: int | None = None, recorded: Mapping[int, int] | None = None) -> None:
    """Write the crash (or exit) report of ``trace`` to ``out`` (``recorded``: see
    :func:`build`)."""
    doc = build(trace, last=last, tid=tid, recorded=recorded)
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
               tid: int | None = None, recorded: Mapping[int, int] | None = None) -> None:
    """The reports of several processes: text one after the other, each headed with its
    pid and argv; JSON one document, ``{"reports": [...]}`` when there are several."""
    if len(traces) == 1:
        render(traces[0], out, last=last, fmt=fmt, tid=tid, recorded=recorded)
        return
    docs = [build(t, last=last, tid=tid, recorded=recorded) for t in traces]
    if fmt == "json":
        write_json({"reports": docs}, out)
        return
    for k, doc in enumerate(docs):
        if k:
            out.write("\n")
        write_text(doc, out)
