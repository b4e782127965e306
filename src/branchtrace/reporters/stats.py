"""Statistics of a trace: records, threads, lost records, duration, branches by kind,
and the hottest functions and edges.

A trace of several processes gets a table of them (pid, parent, argv, exit, threads,
branches), and statistics over all of them, perf-like: each process's branches are
symbolized with that process's own modules, and functions and edges are merged by name
(an edge by its kind and its two symbolized ends) across processes. Several trace files
(runs) are merged the same way (:func:`run_part` for each, then :func:`build_runs`),
with a table of the runs, and their processes labelled with their run.

:func:`build` gives the numbers as plain data (what ``--format json`` prints);
:func:`render` writes them as text or JSON. Every number is a function of each thread's
*edge table* (each distinct branch with its count): ``branchtrace stats`` has a trace
file's tables counted in one pass (tracefile/counts.py) and never holds the branches;
a trace in memory gets its tables from its branch arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from ..analysis import FunctionIndex
from ..analysis.hot import edge_table, hot_edges_of, hot_functions_of, kind_counts_of
from ..decode.pairs import merge_edges
from ..model import BRANCH_DTYPE, BranchKind
from ..trace import Trace
from .base import pick_threads


#: When processes are merged, each one contributes this many times ``top`` edges.
_EDGES_PER_PROCESS = 16


Edges = Mapping[int, np.ndarray]      # tid -> edge table (decode.pairs.EDGE_COUNT_DTYPE)


def build(trace: Trace, *, top: int = 10, tid: int | None = None,
          edges: Edges | None = None) -> dict[str, Any]:
    """The statistics of ``trace`` (all threads, or ``tid``) as plain data. ``edges``:
    the edge table of each thread, when the caller counted them (the trace's branch
    arrays are not read then); else they come from the branch arrays."""
    if edges is None:
        edges = {t: edge_table(a) for t, a in trace.threads.items()}
    if len(trace.processes) > 1 and tid is None:
        return _build_many(trace, top, edges)
    doc = _build_one(trace, top, tid, top, edges)
    doc["processes"] = [_process_row(trace, trace.processes[0].pid, edges)]
    return doc


def _branches(edges: Edges, tid: int) -> int:
    table = edges.get(tid)
    return int(table["count"].sum()) if table is not None else 0


def _process_row(trace: Trace, pid: int, edges: Edges) -> dict[str, Any]:
    one = trace.for_pid(pid)
    p = one.processes[0]
    return {"pid": p.pid, "ppid": p.ppid, "argv": list(p.argv), "exit": _exit_text(one),
            "threads": len(one.threads), "branches": sum(_branches(edges, t) for t in one.threads)}


def _build_many(trace: Trace, top: int, edges: Edges) -> dict[str, Any]:
    """Statistics over every process, each symbolized with its own modules."""
    parts = _process_parts(trace, top, edges)
    total = sum(part["records"] for part in parts)
    duration = max(0.0, trace.end_time - trace.start_time)
    first = trace.for_pid(trace.processes[0].pid)
    merged = _merged(parts, top)
    return {
        "program": list(trace.argv), "pid": trace.pid, "backend": trace.backend,
        "mode": trace.mode, "exit": _exit_text(first),
        "records": total, "threads": merged["threads"],
        "lost": sum(t["lost"] for t in merged["threads"]),
        "duration": duration,
        "rate": total / duration if duration > 0 else None,
        "kinds": merged["kinds"], "functions": merged["functions"], "edges": merged["edges"],
        "truncated": bool(trace.truncated),
        "notes": list(trace.notes),
        "processes": [_process_row(trace, p.pid, edges) for p in trace.processes],
    }


def _process_parts(trace: Trace, top: int, edges: Edges) -> list[dict[str, Any]]:
    """The statistics of each process of ``trace``: every function, ``top`` x
    :data:`_EDGES_PER_PROCESS` edges (for :func:`_merged`)."""
    return [_build_one(trace.for_pid(p.pid), 1 << 30, None, top * _EDGES_PER_PROCESS, edges)
            for p in trace.processes]


def _merged(parts: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """The threads (each labelled with its pid), kinds, and the ``top`` functions and
    edges of ``parts`` merged by name."""
    functions: dict[tuple[str, str | None], dict[str, Any]] = {}
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    kinds: dict[str, int] = {}
    threads = []
    for part in parts:
        threads += [dict(t, pid=part["pid"]) for t in part["threads"]]
        for k, n in part["kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
        for f in part["functions"]:
            got = functions.setdefault((f["name"], f["module"]), dict(f, branches=0, calls=0))
            got["branches"] += f["branches"]
            got["calls"] += f["calls"]
        for e in part["edges"]:
            got = merged.setdefault((e["kind"], e["from_symbol"], e["to_symbol"]), dict(e, count=0))
            got["count"] += e["count"]
    return {
        "threads": threads,
        "kinds": {k: kinds[k] for k in sorted(kinds, key=lambda k: BranchKind.from_label(k))},
        "functions": sorted(functions.values(),
                            key=lambda f: (-f["branches"], f["name"], f["module"] or ""))[:top],
        "edges": sorted(merged.values(),
                        key=lambda e: (-e["count"], e["from_symbol"], e["to_symbol"]))[:top],
    }


def run_part(run: str, path: str, trace: Trace, *, top: int = 10,
             edges: Edges | None = None) -> dict[str, Any]:
    """One trace file's share of :func:`build_runs` (run id ``run``): its processes'
    statistics, made now so that its edge tables and symbolizers can go before the next
    file is read."""
    if edges is None:
        edges = {t: edge_table(a) for t, a in trace.threads.items()}
    parts = _process_parts(trace, top, edges)
    threads = [dict(t, run=run, pid=part["pid"]) for part in parts for t in part["threads"]]
    records = sum(part["records"] for part in parts)
    first = trace.for_pid(trace.processes[0].pid)
    summary = {"run": run, "path": path, "program": list(trace.argv), "pid": trace.pid,
               "backend": trace.backend, "mode": trace.mode, "exit": _exit_text(first),
               "processes": len(trace.processes), "threads": len(threads),
               "records": records, "lost": sum(t["lost"] for t in threads),
               "duration": max(0.0, trace.end_time - trace.start_time),
               "truncated": bool(trace.truncated)}
    processes = [dict({"run": run}, **_process_row(trace, p.pid, edges))
                 for p in trace.processes]
    return {"summary": summary, "processes": processes, "parts": parts, "threads": threads,
            "notes": [f"{run}: {note}" for note in trace.notes]}


def build_runs(runs: list[dict[str, Any]], *, top: int = 10) -> dict[str, Any]:
    """Statistics over several trace files (each a :func:`run_part`), perf-like: every
    process symbolized with its own modules, functions and edges merged by name across
    processes and runs; the records, kinds and function counts are the runs' sums."""
    threads = [t for one in runs for t in one["threads"]]
    merged = _merged([part for one in runs for part in one["parts"]], top)
    summaries = [one["summary"] for one in runs]
    total = sum(s["records"] for s in summaries)
    duration = sum(s["duration"] for s in summaries)
    return {
        "runs": summaries,
        "records": total, "threads": threads,
        "lost": sum(t["lost"] for t in threads),
        "duration": duration,
        "rate": total / duration if duration > 0 else None,
        "kinds": merged["kinds"], "functions": merged["functions"], "edges": merged["edges"],
        "truncated": any(s["truncated"] for s in summaries),
        "notes": [note for one in runs for note in one["notes"]],
        "processes": [p for one in runs for p in one["processes"]],
    }


def _build_one(trace: Trace, top: int, tid: int | None, top_edges: int,
               edges: Edges) -> dict[str, Any]:
    tids = pick_threads(trace, tid)
    empty = edge_table(np.zeros(0, BRANCH_DTYPE))
    tables = [edges.get(t, empty) for t in tids]
    table = tables[0] if len(tables) == 1 else merge_edges(tables) if tables else empty
    functions = FunctionIndex(trace.symbolizer)
    sym = trace.symbolizer
    threads = []
    for t, a in zip(tids, tables):
        lost = sum(g.count for g in trace.gaps if g.tid == t) or trace.lost.get(t, 0)
        threads.append({"tid": t, "records": int(a["count"].sum()), "lost": lost,
                        "gaps": sum(1 for g in trace.gaps if g.tid == t)})
    total = int(table["count"].sum())
    by_kind = kind_counts_of(table)
    hot = hot_edges_of(table, top_edges)
    ends = [e.from_ip for e in hot] + [e.to_ip for e in hot]
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
                       "calls": f.calls} for f in hot_functions_of(table, functions, top)],
        "edges": [{"count": e.count, "kind": e.kind.label, "from": e.from_ip, "to": e.to_ip,
                   "from_symbol": locs[i].short(), "to_symbol": locs[len(hot) + i].short()}
                  for i, e in enumerate(hot)],
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
    total = doc["records"]
    w = out.write
    runs = doc.get("runs")
    if runs is not None:
        _write_runs(runs, w)
    else:
        program = " ".join(doc["program"]) or f"pid {doc['pid']}"
        w(f"trace:     {program} (pid {doc['pid']}), {doc['backend']} backend, "
          f"{doc['mode']} mode; {doc['exit']}\n")
        if doc["truncated"]:
            w("           (the trace file was cut short: how the program ended is not known)\n")
    processes = doc.get("processes", [])
    if runs is not None:
        _write_processes(processes, w, runs=True)
        w(f"records:   {total} branches in {len(doc['threads'])} thread(s) of "
          f"{len(processes)} process(es) in {len(runs)} runs\n")
    elif len(processes) > 1:
        _write_processes(processes, w)
        w(f"records:   {total} branches in {len(doc['threads'])} thread(s) of "
          f"{len(processes)} processes\n")
    else:
        w(f"records:   {total} branches in {len(doc['threads'])} thread(s)\n")
    w(f"lost:      {doc['lost']}\n")
    rate = f" ({doc['rate']:,.0f} branches/s)" if doc["rate"] else ""
    w(f"duration:  {doc['duration']:.6f} s{rate}\n")
    if len(doc["threads"]) > 1 or doc["lost"]:
        w("\nthreads:\n")
        for t in doc["threads"]:
            gaps = f" in {t['gaps']} gap(s)" if t["gaps"] else ""
            pid = f"  (run {t['run']}, pid {t['pid']})" if "run" in t \
                else f"  (pid {t['pid']})" if "pid" in t else ""
            w(f"  {t['tid']:>8}  {t['records']:>12} branches  {t['lost']:>10} lost{gaps}{pid}\n")
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


def _write_processes(processes: list[dict[str, Any]], w: Any, runs: bool = False) -> None:
    if runs:
        w(f"processes: {len(processes)}\n")
    else:
        w(f"\nprocesses: {len(processes)} (the statistics below cover all of them, each "
          f"symbolized with its own modules, merged by name; --pid PID for one)\n")
    width = max([len(p.get("run", "")) for p in processes] + [3]) if runs else 0
    head = f"  {'run':<{width}}" if runs else ""
    w(f"{head}  {'pid':>8}  {'parent':>8}  {'threads':>7}  {'branches':>12}  "
      f"{'exit':<26}  argv\n")
    for p in processes:
        argv = " ".join(p["argv"]) or "?"
        run = f"  {p['run']:<{width}}" if runs else ""
        w(f"{run}  {p['pid']:>8}  {p['ppid'] or '-':>8}  {p['threads']:>7}  "
          f"{p['branches']:>12}  {p['exit']:<26}  {argv}\n")
    w("\n")


def _write_runs(runs: list[dict[str, Any]], w: Any) -> None:
    w(f"runs:      {len(runs)} trace files (the statistics below cover all of them, each "
      f"process symbolized with its own modules, merged by name)\n")
    width = max([len(r["run"]) for r in runs] + [3])
    w(f"  {'run':<{width}}  {'backend':<7}  {'mode':<6}  {'branches':>12}  {'exit':<26}  "
      f"file\n")
    for r in runs:
        cut = " (cut short)" if r["truncated"] else ""
        w(f"  {r['run']:<{width}}  {r['backend']:<7}  {r['mode']:<6}  {r['records']:>12}  "
          f"{r['exit'] + cut:<26}  {r['path']}\n")
    w("\n")


def render(trace: Trace, out: IO[str], *, top: int = 10, tid: int | None = None,
           fmt: str = "text", edges: Edges | None = None) -> None:
    """Write the statistics of ``trace`` to ``out`` as text or JSON (``edges``: see
    :func:`build`)."""
    write_doc(build(trace, top=top, tid=tid, edges=edges), out, fmt)


def write_doc(doc: dict[str, Any], out: IO[str], fmt: str = "text") -> None:
    """Write statistics made by :func:`build` or :func:`build_runs` as text or JSON."""
    if fmt == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        write_text(doc, out)
