"""Run SQL over trace files, in an embedded DuckDB.

Tables: branches (run, pid, tid, seq, from_ip, to_ip, kind, block_start, and the
function, module, file and line of each end), addresses, edges, calls, functions,
blocks, runs, processes, threads; docs/sql.md describes them. Each trace file is a
run; a directory stands for every *.btrace inside it (sorted). The trace is read chunk
by chunk for each query, in bounded memory whatever its length. The result is a table
on a terminal, CSV otherwise (or --format csv, json, parquet).

Needs the sql extra: pip install 'branchtrace[sql]'.

Example: branchtrace sql fib.btrace "SELECT callee, sum(count) n FROM calls GROUP BY 1 ORDER BY n DESC LIMIT 5"
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..reporters.base import check_output, write_bytes_to, write_to
from ._inputs import expand_inputs

NAME = "sql"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="+", metavar="FILE... QUERY",
                   help="one or more trace files (or directories of them), then the query")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"),
                   help="table on a terminal, csv otherwise (the default)")
    p.add_argument("-o", "--output", default="-", metavar="OUT",
                   help="where to write ('-', the default: stdout)")
    p.add_argument("--memory-limit", default="512MB", metavar="SIZE",
                   help="DuckDB's memory limit; it spills to disk past it (default 512MB)")


def main(args: argparse.Namespace) -> int:
    if len(args.args) < 2:
        raise UsageError("give one or more trace files, then the query")
    *given, query = args.args
    check_output(args.output)
    files = expand_inputs(given, args.output)
    fmt = args.format or ("table" if args.output == "-" and sys.stdout.isatty() else "csv")
    from ..query import output
    from ..query.session import Session, engine, error_line

    duckdb = engine()
    with Session(files, memory_limit=args.memory_limit) as session:
        rel = session.query(query)
        try:
            if rel is not None:
                if fmt == "table":
                    write_to(args.output, lambda out: output.write_table(session.con, rel, out))
                elif fmt == "json":
                    write_to(args.output, lambda out: output.write_json(rel, out))
                elif fmt == "csv":
                    write_to(args.output, lambda out: output.write_csv(rel, out))
                else:
                    write_bytes_to(args.output, lambda out: output.write_parquet(rel, out))
        except duckdb.Error as err:
            raise UsageError(f"query: {error_line(err)}") from None
        for warning in session.warnings:
            print(f"branchtrace: warning: {warning}", file=sys.stderr)
    return 0
