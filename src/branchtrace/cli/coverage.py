"""Write the code coverage of trace files: executed basic blocks and edges with hit counts.

Several FILEs (and directories: every *.btrace file in one, sorted) are combined, as
`coverage combine` does: the union of what ran in each, hits added up; a module is
known by its path and build id, wherever each run loaded it.

Formats:
  drcov  DynamoRIO's drcov (binary; Lighthouse, bncov, Lightkeeper load it): the
         executed blocks of every module, without counts
  lcov   lcov tracefile (genhtml, coverage services): source lines with code and how
         often they ran, from the DWARF line tables; functions; and branches (BRDA),
         the conditional jumps of each line: outcome 0 is the jump taken, 1 the
         fall-through; '-' when the jump never ran, a count (maybe 0) when it did.
         These are machine branches: at -O0 one per source condition, with gcov -b's
         counts, except a switch (gcov: one arc per case; here the compare-and-jumps
         gcc made of it). genhtml --branch-coverage shows them
  text   a summary like `coverage report`: per source file its lines with code, the
         ones never run, and the percentage run; a TOTAL row (--show-missing: the
         lines never run, as ranges)
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

Source files (lcov and text): those of every module that ran, less those not on disk
(unless --all-sources), less what --include/--omit leave out. A pattern is fnmatch's on
the whole path as the report writes it ('*' matches '/' too), as coverage.py's: the
repeatable --include keeps only files matching one (all if none), --omit then leaves
out files matching one; a value may hold several patterns separated by commas, and a
pattern that starts with neither '*', '?' nor '/' is relative to the current
directory ('src/*' is "$PWD/src/*"). Example: --omit '/usr/*' leaves out the system
headers that libc's debug information names.

--fail-under PCT: after writing the report, exit 2 with one line when the total line
coverage (the text format's TOTAL, one decimal; with the same --include, --omit,
--all-sources) is less than PCT, as coverage.py does; with any format.

With several processes: the union of what ran in each (each process read with its own
modules; a file mapped by several processes is one module, hits added up); --pid PID
for one process (with one FILE).

A block ran when the trace shows control reaching it; code before a thread's first
recorded branch is not seen (record with --start entry to see the whole program).
Example: branchtrace coverage prog.btrace --format lcov -o prog.info && genhtml -o html prog.info
         branchtrace coverage runs/ --format text --omit '/usr/*' --fail-under 80
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..reporters.base import Options, check_output, write_report
from ..reporters.table import COVERAGE_REPORTERS
from ._file import add_pid_argument, check_not_input, select_process
from ._inputs import expand_inputs

if TYPE_CHECKING:
    from ..analysis.coverage import Coverage

NAME = "coverage"
FORMATS = tuple(COVERAGE_REPORTERS)
#: The formats that may go to stdout without -o.
TO_STDOUT = ("text",)


def percentage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, not {text!r}") from None
    if not 0 <= value <= 100 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, not {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="trace files (branchtrace run -o FILE ...) or directories of them: "
                        "their coverage is combined")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    add_pid_argument(p)
    p.add_argument("-o", "--output", metavar="OUT",
                   help="where to write ('-' for stdout; the default for text only)")
    p.add_argument("--test-name", default="", metavar="NAME",
                   help="lcov: the test name (TN:) of the record")
    p.add_argument("--all-sources", action="store_true",
                   help="lcov, text: keep source files that are not on disk")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="lcov, text: only source files matching PATTERN (repeatable)")
    p.add_argument("--omit", action="append", default=[], metavar="PATTERN",
                   help="lcov, text: leave out source files matching PATTERN (repeatable)")
    p.add_argument("--show-missing", action="store_true",
                   help="text: list the lines that never ran")
    p.add_argument("--fail-under", type=percentage, metavar="PCT",
                   help="exit 2 when the total line coverage is less than PCT")


def input_files(values: list[str]) -> tuple[list[str], list[str]]:
    """The trace files the FILE arguments name (cli/_inputs.py: a directory gives its
    *.btrace files, sorted), each once; and warnings about those given twice (the same
    file counted twice would double its hits)."""
    unique: list[str] = []
    warnings: list[str] = []
    seen: set[tuple[int, int]] = set()
    for path in expand_inputs(values):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            warnings.append(f"{path} is given more than once: read once")
        else:
            seen.add((st.st_dev, st.st_ino))
            unique.append(path)
    return unique, warnings


def read_coverage(path: str, pid: int | None, named: bool) -> tuple[Coverage, list[str]]:
    """The coverage of one trace file (every process, or ``pid``'s), and its warnings
    (beginning with the file's path when ``named``)."""
    # imported here: `branchtrace run` should not pay for the analysis
    from ..analysis.coverage_union import compute_all
    from ..tracefile import scan, to_trace
    from ..tracefile.counts import count_runs

    # the file is read chunk by chunk: memory grows with the distinct runs, not the trace
    tf = scan(path)
    trace = select_process(to_trace(tf, decode=False), pid)
    cov = compute_all(trace, counts=lambda tid: count_runs(tf, tid))
    warnings = []
    if trace.truncated:
        warnings.append("the trace file was cut short; it is read up to its last whole record")
    for one in trace.per_process():
        warnings += one.symbolizer.warnings
    warnings += cov.notes
    lost = sum(g.count for g in trace.gaps)
    if lost:
        warnings.append(f"{lost} branch record(s) were lost while recording; "
                        "the code around those gaps is not counted")
    head = f"{path}: " if named else ""
    return cov, [head + w for w in warnings]


def main(args: argparse.Namespace) -> int:
    from ..analysis.coverage_union import union

    if not re.fullmatch(r"\w*", args.test_name, re.ASCII):
        raise UsageError(f"--test-name: letters, digits and '_' only, not {args.test_name!r}")
    if args.output is None:
        if args.format not in TO_STDOUT:
            raise UsageError(f"-o OUT is required with --format {args.format} ('-' for stdout)")
        args.output = "-"
    check_output(args.output)
    paths, warnings = input_files(args.files)
    for path in paths:
        check_not_input(path, args.output)
    if args.pid is not None and len(paths) > 1:
        raise UsageError("--pid selects a process of one trace file: give one FILE")
    covs = []
    for path in paths:
        cov, said = read_coverage(path, args.pid, named=len(paths) > 1)
        covs.append(cov)
        warnings += said
    combined = covs[0] if len(covs) == 1 else union(covs)
    cwd = os.getcwd()
    from ..reporters.lines import prepare_patterns

    options = Options(test_name=args.test_name, all_sources=args.all_sources,
                      include=prepare_patterns(args.include, cwd),
                      omit=prepare_patterns(args.omit, cwd), show_missing=args.show_missing)
    warnings += write_report(COVERAGE_REPORTERS[args.format], combined, args.output, options)
    for warning in dict.fromkeys(warnings):
        print(f"branchtrace: warning: {warning}", file=sys.stderr)
    if args.fail_under is not None:
        return fail_under(combined, options, args.fail_under)
    return 0


def fail_under(cov: Coverage, options: Options, minimum: float) -> int:
    """2, with one line on stderr, when the total line coverage is below ``minimum``."""
    from ..reporters.coverage_text import cover_percent
    from ..reporters.lines import PathFilter, line_coverage

    lines = line_coverage(cov, all_sources=options.all_sources, branches=False,
                          paths=PathFilter(options.include, options.omit))
    hit, total = lines.totals()
    if total == 0:
        if minimum > 0:
            print(f"branchtrace: coverage failure: no source lines to measure "
                  f"(--fail-under={minimum:g})", file=sys.stderr)
            return 2
        return 0
    shown = cover_percent(hit, total)
    if float(shown) < minimum or (minimum == 100 and hit < total):
        print(f"branchtrace: coverage failure: total line coverage {shown}% "
              f"({hit} of {total} lines) is less than --fail-under={minimum:g}",
              file=sys.stderr)
        return 2
    return 0
