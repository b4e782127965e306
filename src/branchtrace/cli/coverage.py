"""Write the code coverage of a trace file: executed basic blocks and edges with hit counts.

Formats:
  drcov  DynamoRIO's drcov (binary; Lighthouse, bncov, Lightkeeper load it): the
         executed blocks of every module, without counts
  lcov   lcov tracefile (genhtml, coverage services): source lines with code and how
         often they ran, from the DWARF line tables; source files not on disk are left
         out unless --all-sources
  json   blocks and taken edges with hit counts, per module:
           {"format": "branchtrace-coverage", "version": 1,
            "summary": {"branches", "blocks", "edges", "executed_bytes", "runs",
                        "dropped_runs", "unmapped_blocks"},
            "notes": [...],
            "modules": [{"id", "path", "start", "end", "bias", "build_id",
                         "blocks": [[offset, size, hits], ...],
                         "edges": [[from_offset, to_module, to_offset, kind, hits], ...]}],
            "unmapped": {"blocks": [...], "edges": [...]}}
         offsets are from the module's start (lowest mapped address); to_module -1
         means the target lies in no module and to_offset is its address

With several processes: the union of what ran in each (each process read with its own
modules; a file mapped by several processes is one module, hits added up); --pid PID
for one process.

A block ran when the trace shows control reaching it; code before a thread's first
recorded branch is not seen (record with --start entry to see the whole program).
Example: branchtrace coverage prog.btrace --format lcov -o prog.info && genhtml -o html prog.info
"""

from __future__ import annotations

import argparse
import re
import sys

from ..errors import UsageError
from ..reporters.base import Options, check_output, write_report
from ..reporters.table import COVERAGE_REPORTERS
from ._file import add_pid_argument, check_not_input, select_process, warn

NAME = "coverage"
FORMATS = tuple(COVERAGE_REPORTERS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a trace file (branchtrace run -o FILE ...)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    add_pid_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to write ('-' for stdout)")
    p.add_argument("--test-name", default="", metavar="NAME",
                   help="lcov: the test name (TN:) of the record")
    p.add_argument("--all-sources", action="store_true",
                   help="lcov: keep source files that are not on disk")


def main(args: argparse.Namespace) -> int:
    # imported here: `branchtrace run` should not pay for the analysis
    from ..analysis.coverage_union import compute_all
    if not re.fullmatch(r"\w*", args.test_name, re.ASCII):
        raise UsageError(f"--test-name: letters, digits and '_' only, not {args.test_name!r}")
    check_output(args.output)
    check_not_input(args.file, args.output)
    from ..tracefile import scan, to_trace
    from ..tracefile.counts import count_runs

    # the file is read chunk by chunk: memory grows with the distinct runs, not the trace
    tf = scan(args.file)
    trace = select_process(to_trace(tf, decode=False), args.pid)
    cov = compute_all(trace, counts=lambda tid: count_runs(tf, tid))
    warnings = list(cov.notes)
    lost = sum(g.count for g in trace.gaps)
    if lost:
        warnings.append(f"{lost} branch record(s) were lost while recording; "
                        "the code around those gaps is not counted")
    options = Options(test_name=args.test_name, all_sources=args.all_sources)
    warnings += write_report(COVERAGE_REPORTERS[args.format], cov, args.output, options)
    warn(trace)
    for warning in warnings:
        print(f"branchtrace: warning: {warning}", file=sys.stderr)
    return 0
