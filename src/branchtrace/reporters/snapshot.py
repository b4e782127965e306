"""The report of a snapshot (``run --trigger``, SIGUSR2, ``branchtrace snapshot``): the
crash report's sections for every thread of the program at that moment, the thread
that made the snapshot (a trigger's call) first, with its stack unwound from the copy
of its registers and stack and replayed from its calls; the other threads' stacks are
replayed. Text: each thread headed ``snapshot N of PROGRAM``; JSON: one document,
``{"snapshot": {...}, "threads": [crash report documents]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from ..trace import Trace
from .crash import build, write_json, write_text


def build_all(trace: Trace, *, number: int, reason: str, file: str | None = None,
              last: int = 16, own: Sequence[str] = ()) -> dict[str, Any]:
    """The snapshot's report as plain data."""
    head = {"number": number, "reason": reason, "thread": trace.exit.tid, "file": file}
    docs = []
    views = [trace.for_pid(p.pid) for p in trace.processes] if len(trace.processes) > 1 \
        else [trace]
    for view in views:
        tids = list(view.threads)
        first = view.exit.tid
        if first in view.threads:
            tids.remove(first)
            tids.insert(0, first)
        for tid in tids:
            doc = build(view, last=last, tid=tid, own=own)
            if tid != first:   # the stopped-at address is the trigger thread's
                for key in ("fault_pc", "fault_instruction", "fault_instruction_note"):
                    doc["exit"].pop(key, None)
            doc["snapshot"] = head
            docs.append(doc)
    return {"snapshot": head, "threads": docs}


def render(trace: Trace, out: IO[str], *, number: int, reason: str, file: str | None = None,
           last: int = 16, fmt: str = "text", own: Sequence[str] = ()) -> None:
    """Write the report of snapshot ``number`` (``trace``: the rings at that moment)."""
    doc = build_all(trace, number=number, reason=reason, file=file, last=last, own=own)
    if fmt == "json":
        write_json(doc, out)
        return
    for k, thread_doc in enumerate(doc["threads"]):
        if k:
            out.write("\n")
        write_text(thread_doc, out)
    if file:
        out.write(f"  trace file: {file}\n")
    out.write("\n")
