"""Show statistics of a trace file: records, kinds, hottest functions and edges.

Records, threads, lost records, duration, branches by kind, and the hottest functions
(by branches taken inside them) and edges (from => to, by count).

With several processes (the program and those it started): a table of them (pid,
parent, threads, branches, exit, argv), then statistics over all of them, perf-like:
each process symbolized with its own modules, functions and edges merged by name.
--pid PID for one process.

With several trace files (or directories: every *.btrace inside), as the runs of a test
suite: a table of the runs, of their processes (run, pid, ...), then statistics over
all of them, merged by name as above; the counts are the sums of the runs'. --pid and
--thread take one file.

The file is read in one pass, chunk by chunk: memory grows with the distinct branches,
not with the trace (~120M branches/s on one core with numba, the `fast` extra).

Example: branchtrace stats fib.btrace --top 5
         branchtrace stats runs/ --format json
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..reporters.base import check_output, write_to
from ._file import add_file_arguments, load_file, warn, warnings_of
from ._inputs import expand_inputs, named_runs
from ._record import positive_int

if TYPE_CHECKING:
    import numpy as np

    from ..trace import Trace
    from ..tracefile import TraceFile

NAME = "stats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p, several=True)
    p.add_argument("--top", type=positive_int, default=10, metavar="N",
                   help="how many hottest functions and edges to show (default 10)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def main(args: argparse.Namespace) -> int:
    # imported here: `branchtrace run` should not pay for the reporters
    from ..reporters import stats

    check_output(args.output)
    files = expand_inputs(args.files, args.output)
    if len(files) > 1:
        return _several(files, args)
    args.file = files[0]
    trace, tf = load_file(args, decode=False)
    edges = _count(trace, tf, args.thread)
    write_to(args.output, lambda out: stats.render(trace, out, top=args.top, tid=args.thread,
                                                   fmt=args.format, edges=edges))
    warn(trace)
    return 0


def _count(trace: Trace, tf: TraceFile, tid: int | None) -> dict[int, np.ndarray]:
    """The edge table of each thread (``tid``: that one), counted from the file in one
    pass; chunks that do not decompress become notes of ``trace``."""
    from ..reporters.base import pick_threads
    from ..tracefile.counts import count_thread

    edges = {}
    for t in pick_threads(trace, tid):
        counted = count_thread(tf, t)
        edges[t] = counted.edges
        if counted.corrupt:
            trace.notes.append(f"thread {t}: {counted.corrupt} chunk(s) did not "
                               f"decompress; their records are missing")
    return edges


def _several(files: list[str], args: argparse.Namespace) -> int:
    """Statistics over the runs ``files``, read one after the other (each file's edge
    tables and symbolizers go before the next file is read)."""
    from ..reporters import stats
    from ..tracefile import scan, to_trace

    for option, value in (("--pid", args.pid), ("--thread", args.thread)):
        if value is not None:
            raise UsageError(f"{option} takes one trace file, not {len(files)}")
    warnings: list[str] = []

    def part(rid: str, path: str) -> dict[str, Any]:
        # its own frame: the file (its chunks are in memory) goes before the next is read
        tf = scan(path)
        trace = to_trace(tf, decode=False)
        warnings.extend(warnings_of(trace, path))
        return stats.run_part(rid, path, trace, top=args.top, edges=_count(trace, tf, None))

    runs = [part(rid, path) for rid, path in named_runs(files)]
    doc = stats.build_runs(runs, top=args.top)
    write_to(args.output, lambda out: stats.write_doc(doc, out, args.format))
    for warning in dict.fromkeys(warnings):
        print(f"branchtrace: warning: {warning}", file=sys.stderr)
    return 0
