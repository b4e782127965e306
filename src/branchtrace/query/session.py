"""An embedded DuckDB with the tables of some trace files (docs/sql.md).

``branches`` is a view over one :class:`~.batches.Source` per run (streamed, never
held: each scan of it decodes the file chunk by chunk); ``addresses``, ``runs``,
``processes`` and ``threads`` are small Arrow tables; ``edges``, ``calls``,
``functions`` and ``blocks`` are the SQL views of :data:`~.schema.DERIVED`. DuckDB
runs with a memory limit and spills to a temporary directory of its own, removed when
the session closes.
"""

from __future__ import annotations

import shutil
from functools import partial
import tempfile
from types import ModuleType
from typing import Any

from ..errors import UsageError
from .addresses import Addresses
from .batches import Source, branch_batches, branch_schema
from .runs import Run, open_runs, process_rows, run_rows, thread_rows
from .schema import ADDRESSES, DERIVED, PROCESSES, RUNS, THREADS, arrow_schema

INSTALL = "pip install 'branchtrace[sql]'"
#: DuckDB's memory limit (its buffers, hash tables and sorts; it spills past it).
MEMORY_LIMIT = "512MB"


def engine() -> ModuleType:
    """The duckdb module (and pyarrow importable), or a one-line UsageError."""
    try:
        import duckdb
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise UsageError(f"this command needs DuckDB and pyarrow ({err.name} is not "
                         f"installed): {INSTALL}") from None
    return duckdb


def error_line(err: BaseException) -> str:
    """DuckDB's message in one line, without its picture of where in the query."""
    lines = []
    for line in str(err).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(err).__name__


def small_table(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


class Session:
    """DuckDB over the trace files ``paths``; close it (or use ``with``)."""

    def __init__(self, paths: list[str], *, memory_limit: str = MEMORY_LIMIT,
                 threads: int | None = None) -> None:
        duckdb = engine()
        import pyarrow as pa

        if not paths:
            raise UsageError("give one or more trace files")
        self._tmp = tempfile.mkdtemp(prefix="branchtrace-sql-")
        config: dict[str, Any] = {"memory_limit": memory_limit, "temp_directory": self._tmp}
        if threads:
            config["threads"] = threads
        try:
            self.con = duckdb.connect(":memory:", config=config)
        except duckdb.Error as err:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise UsageError(f"--memory-limit {memory_limit}: {error_line(err)}") from None
        try:
            self.runs: list[Run] = open_runs(paths)
            self.addresses = [Addresses(run) for run in self.runs]
        except BaseException:
            self.close()
            raise
        con = self.con
        scans = []
        for i, (run, addresses) in enumerate(zip(self.runs, self.addresses)):
            name = f"_branches_{i}"
            con.register(name, Source(branch_schema(), partial(branch_batches, run, addresses)))
            scans.append(f"SELECT * FROM {name}")
        con.execute("CREATE VIEW branches AS " + " UNION ALL ".join(scans))
        tables = {
            "addresses": pa.concat_tables([a.table() for a in self.addresses])
            if self.addresses else small_table([], arrow_schema(ADDRESSES)),
            "runs": small_table([r for run in self.runs for r in run_rows(run)],
                                arrow_schema(RUNS)),
            "processes": small_table([r for run in self.runs for r in process_rows(run)],
                                     arrow_schema(PROCESSES)),
            "threads": small_table([r for run in self.runs for r in thread_rows(run)],
                                   arrow_schema(THREADS)),
        }
        for name, table in tables.items():
            con.register(f"_{name}", table)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
        for name, sql in DERIVED.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")

    @property
    def warnings(self) -> list[str]:
        """The symbolizers' warnings (unreadable modules, broken DWARF), one line each."""
        return list(dict.fromkeys(w for a in self.addresses for w in a.symbolizer.warnings))

    def query(self, sql: str) -> Any:
        """The relation of ``sql`` (None for a statement without a result); a bad query
        is a one-line UsageError."""
        duckdb = engine()
        try:
            return self.con.sql(sql)
        except duckdb.Error as err:
            raise UsageError(f"query: {error_line(err)}") from None

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
