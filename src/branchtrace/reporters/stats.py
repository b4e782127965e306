"""Statistics of a trace: records, threads, lost records, duration, branches by kind,
and the hottest functions and edges.

:func:`build` gives the numbers as plain data (what ``--format json`` prints);
:func:`render` writes them as text or JSON. Counting is numpy over the branch arrays.
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np

from ..analysis import (
    FunctionIndex,
    all_branches,
    hot_edges,
    hot_functions,
    kind_counts,
)
from ..model import BranchKind
from ..trace import Trace
from .base import pick_threads


def build(trace: Trace, *, top: int = 10, tid: int | None = None) -> dict[str, Any]:
    """The statistics of ``trace`` (all threads, or ``tid``) as plain data."""
    tids = pick_threads(trace, tid)
    arrays = [trace.branches(t) for t in tids]
    branches = all_branches(arrays)
    functions = FunctionIndex(trace.symbolizer)
    sym = trace.symbolizer
    threads = []
    for t, a in zip(tids, arrays):
        lost = sum(g.count for g in trace.gaps if g.tid == t) or trace.lost.get(t, 0)
        threads.append({"tid": t, "records": len(a), "lost": lost,
                        "gaps": sum(1 for g in trace.gaps if g.tid == t)})
    total = len(branches)
    by_kind = kind_counts(branches)
    edges = hot_edges(branches, top)
    ends = [e.from_ip for e in edges] + [e.to_ip for e in edges]
    locs = sym.resolve(np.array(ends, dtype=np.uint64)).locations()
    duration = max(0.0, trace.end_time - trace.start_time)
    return {
        "program": list(trace.argv), "pid": trace.pid, "backend": trace.backend,
        "mode": trace.mode, "exit": _exit_text(trace),
        "records": total, "threads": threads,
        "lost": sum(t["lost"] for t in threads),
        "duration": duration,
        "rate": total / duration if duration > 0 else None,
        "kinds": {k.label: n for k, n in sorted(by_kind.items())},
        "functions": [{"name": f.name, "module": f.module, "branches": f.branches,
                       "calls": f.calls} for f in hot_functions(branches, functions, top)],
        "edges": [{"count": e.count, "kind": e.kind.label, "from": e.from_ip, "to": e.to_ip,
                   "from_symbol": locs[i].short(), "to_symbol": locs[len(edges) + i].short()}
                  for i, e in enumerate(edges)],
        "truncated": bool(getattr(trace, "truncated", False)),
        "notes": list(trace.notes),
    }


def _exit_text(trace: Trace) -> str:
    ex = trace.exit
    if ex.status == "exited":
        return f"exited with status {ex.code}"
    if ex.status == "signaled" and ex.signal is not None:
        from .crash import signal_name

        return f"killed by {signal_name(ex.signal)}"
    return ex.status


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


def write_text(doc: dict[str, Any], out: IO[str]) -> None:
    program = " ".join(doc["program"]) or f"pid {doc['pid']}"
    total = doc["records"]
    w = out.write
    w(f"trace:     {program} (pid {doc['pid']}), {doc['backend']} backend, "
      f"{doc['mode']} mode; {doc['exit']}\n")
    if doc["truncated"]:
        w("           (the trace file was cut short: how the program ended is not known)\n")
    w(f"records:   {total} branches in {len(doc['threads'])} thread(s)\n")
    w(f"lost:      {doc['lost']}\n")
    rate = f" ({doc['rate']:,.0f} branches/s)" if doc["rate"] else ""
    w(f"duration:  {doc['duration']:.6f} s{rate}\n")
    if len(doc["threads"]) > 1 or doc["lost"]:
        w("\nthreads:\n")
        for t in doc["threads"]:
            gaps = f" in {t['gaps']} gap(s)" if t["gaps"] else ""
            w(f"  {t['tid']:>8}  {t['records']:>12} branches  {t['lost']:>10} lost{gaps}\n")
    w("\nbranches by kind:\n")
    for kind in BranchKind:
        n = doc["kinds"].get(kind.label, 0)
        if n:
            w(f"  {kind.label:<14}{n:>12}  {_percent(n, total)}\n")
    if doc["functions"]:
        w(f"\nhottest functions (branches taken inside them; top {len(doc['functions'])}):\n")
        w(f"  {'branches':>12}  {'share':>6}  {'calls':>10}  function\n")
        for f in doc["functions"]:
            module = f" ({f['module']})" if f["module"] and not f["name"].startswith("??") else ""
            w(f"  {f['branches']:>12}  {_percent(f['branches'], total)}  {f['calls']:>10}  "
              f"{f['name']}{module}\n")
    if doc["edges"]:
        w(f"\nhottest edges (top {len(doc['edges'])}):\n")
        w(f"  {'count':>12}  {'share':>6}  {'kind':<13} from => to\n")
        for e in doc["edges"]:
            w(f"  {e['count']:>12}  {_percent(e['count'], total)}  {e['kind']:<13} "
              f"{e['from_symbol']} => {e['to_symbol']}\n")
    for note in doc["notes"]:
        w(f"note: {note}\n")


def render(trace: Trace, out: IO[str], *, top: int = 10, tid: int | None = None,
           fmt: str = "text") -> None:
    """Write the statistics of ``trace`` to ``out`` as text or JSON."""
    doc = build(trace, top=top, tid=tid)
    if fmt == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        write_text(doc, out)
