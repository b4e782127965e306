"""Export trace files as hive-partitioned Parquet, for DuckDB, Spark, Trino.

Writes DIR/branches/run=R/tid=T/part-0.parquet (every branch, symbolized, in order),
DIR/addresses, DIR/runs, DIR/processes and DIR/threads (by run), and DIR/views.sql,
which defines the tables and views of `branchtrace sql` over the directory for DuckDB.
Runs exported into the same directory are queried together. docs/sql.md describes the
schema and how it maps to Spark. A run already in DIR is refused.

Needs the sql extra: pip install 'branchtrace[sql]'.

Example: branchtrace export a.btrace b.btrace --format parquet -o traces/
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ._inputs import expand_inputs

NAME = "export"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="trace files, or directories: every *.btrace inside (sorted)")
    p.add_argument("--format", choices=("parquet",), default="parquet",
                   help="parquet (the default; the only format today)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the directory to write (made if missing)")


def main(args: argparse.Namespace) -> int:
    from ..query.session import engine

    engine()
    from ..query.export import export
    from ..query.runs import open_runs

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"-o {args.output}: not a directory")
    runs = open_runs(expand_inputs(args.files, args.output))
    warnings: list[str] = []
    n = export(runs, args.output, warnings)
    for warning in dict.fromkeys(warnings):
        print(f"branchtrace: warning: {warning}", file=sys.stderr)
    print(f"branchtrace: exported {n} branches of {len(runs)} run(s) to {args.output}",
          file=sys.stderr)
    return 0
