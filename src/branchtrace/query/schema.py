"""The tables of ``branchtrace sql`` and ``branchtrace export``: their columns, in code.

docs/sql.md documents the same tables; a test checks the two agree. Every column has
one of three portable types, so that the same Parquet files read the same in DuckDB,
pyarrow, Spark and Trino: ``string`` (Parquet UTF8, Spark ``string``), ``int64``
(Parquet INT64, Spark ``bigint``) and ``int32`` (Parquet INT32, Spark ``int``).
Addresses are ``int64``: user-space addresses of x86-64 fit in 47 bits, and Spark and
Trino have no unsigned types. A symbol column is NULL where it is not known.

The base tables come from the trace files (``branches`` streamed chunk by chunk, the
others small). The derived views (:data:`DERIVED`) are SQL over ``branches`` and
``addresses`` only, the same text in a ``branchtrace sql`` session and over exported
Parquet files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Branch kinds as the ``kind`` column spells them, by their value (model.BranchKind).
KIND_LABELS = ("other", "call", "return", "jump", "cond", "indirect_jump", "indirect_call",
               "syscall", "interrupt")
#: The kinds that enter a function (``calls``, ``functions.calls``).
CALL_KINDS = "('call', 'indirect_call')"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str        # "string", "int64" or "int32"
    doc: str


def _c(name: str, type: str, doc: str) -> Column:
    return Column(name, type, doc)


_SIDE = [("function", "string", "function name"), ("module", "string", "module base name"),
         ("file", "string", "source file (full path, from DWARF)"),
         ("line", "int32", "source line")]

BRANCHES = (
    _c("run", "string", "the run (trace file) id"),
    _c("pid", "int64", "process id"),
    _c("tid", "int64", "thread id"),
    _c("seq", "int64", "index of the branch in its thread's branches, from 0"),
    _c("from_ip", "int64", "address of the branch instruction"),
    _c("to_ip", "int64", "address it went to"),
    _c("kind", "string", "call, return, jump, cond, indirect_jump, indirect_call, syscall, "
                         "interrupt or other"),
    _c("block_start", "int64", "where the straight-line code ending with this branch "
                               "started: the previous branch's to_ip (NULL for a thread's "
                               "first branch and after a gap)"),
    *(_c(f"from_{n}", t, f"{d} of from_ip") for n, t, d in _SIDE),
    *(_c(f"to_{n}", t, f"{d} of to_ip") for n, t, d in _SIDE),
)

ADDRESSES = (
    _c("run", "string", "the run id"),
    _c("pid", "int64", "process id"),
    _c("address", "int64", "a distinct address of the run's branches (from_ip or to_ip)"),
    _c("function", "string", "function name"),
    _c("function_offset", "int64", "from the function's start (NULL when the function is unknown)"),
    _c("module", "string", "module base name"),
    _c("file", "string", "source file"),
    _c("line", "int32", "source line"),
)

RUNS = (
    _c("run", "string", "the run id (the trace file's name without .btrace)"),
    _c("path", "string", "the trace file, as given"),
    _c("command", "string", "the command line recorded"),
    _c("backend", "string", "stalker or ptrace"),
    _c("mode", "string", "stream or ring"),
    _c("start_ns", "int64", "when recording started (ns since the Unix epoch)"),
    _c("end_ns", "int64", "when it ended (0: not known)"),
    _c("exit", "string", "exited, signaled, detached, running or unknown"),
    _c("exit_code", "int32", "exit status when exited"),
    _c("signal", "int32", "signal number when signaled"),
    _c("truncated", "int32", "1 when the file was cut short"),
)

PROCESSES = (
    _c("run", "string", "the run id"),
    _c("pid", "int64", "process id"),
    _c("ppid", "int64", "parent's pid (0: not traced)"),
    _c("command", "string", "its command line"),
    _c("exit", "string", "how it ended"),
    _c("exit_code", "int32", "exit status when exited"),
    _c("signal", "int32", "signal number when signaled"),
)

THREADS = (
    _c("run", "string", "the run id"),
    _c("pid", "int64", "process id"),
    _c("tid", "int64", "thread id"),
    _c("records", "int64", "records of the thread kept in the file"),
    _c("written", "int64", "records the thread produced"),
    _c("lost", "int64", "records lost (ring overwrite, drops, damage)"),
)

#: The base tables: what ``export`` writes and a session feeds.
TABLES: dict[str, tuple[Column, ...]] = {
    "branches": BRANCHES, "addresses": ADDRESSES, "runs": RUNS, "processes": PROCESSES,
    "threads": THREADS,
}
#: Hive partition columns of each exported table (``DIR/TABLE/run=R[/tid=T]/*.parquet``).
PARTITIONS: dict[str, tuple[str, ...]] = {
    "branches": ("run", "tid"), "addresses": ("run",), "runs": ("run",),
    "processes": ("run",), "threads": ("run",),
}

#: The derived views: SQL over ``branches`` and ``addresses`` (DuckDB and Spark SQL).
DERIVED: dict[str, str] = {
    "edges": """
SELECT e.run, e.pid, e.from_ip, e.to_ip, e.kind, e.count,
       f.function AS from_function, f.module AS from_module,
       t.function AS to_function, t.module AS to_module
FROM (SELECT run, pid, from_ip, to_ip, kind, count(*) AS count
      FROM branches GROUP BY run, pid, from_ip, to_ip, kind) e
LEFT JOIN addresses f ON f.run = e.run AND f.pid = e.pid AND f.address = e.from_ip
LEFT JOIN addresses t ON t.run = e.run AND t.pid = e.pid AND t.address = e.to_ip""",
    "calls": f"""
SELECT run, pid, from_function AS caller, from_module AS caller_module,
       to_function AS callee, to_module AS callee_module, count(*) AS count
FROM branches WHERE kind IN {CALL_KINDS}
GROUP BY run, pid, from_function, from_module, to_function, to_module""",
    "functions": f"""
SELECT run, pid, function, module, CAST(sum(b) AS BIGINT) AS branches,
       CAST(sum(c) AS BIGINT) AS calls FROM (
  SELECT run, pid, from_function AS function, from_module AS module, 1 AS b, 0 AS c
  FROM branches
  UNION ALL
  SELECT run, pid, to_function, to_module, 0, 1 FROM branches WHERE kind IN {CALL_KINDS}
) f GROUP BY run, pid, function, module""",
    "blocks": """
SELECT b.run, b.pid, b.start, b.last, b.count, a.function, a.module, a.file, a.line
FROM (SELECT run, pid, block_start AS start, from_ip AS last, count(*) AS count
      FROM branches WHERE block_start IS NOT NULL
      GROUP BY run, pid, block_start, from_ip) b
LEFT JOIN addresses a ON a.run = b.run AND a.pid = b.pid AND a.address = b.start""",
}

#: Columns of the derived views, for docs/sql.md and the tests.
DERIVED_COLUMNS: dict[str, tuple[str, ...]] = {
    "edges": ("run", "pid", "from_ip", "to_ip", "kind", "count", "from_function",
              "from_module", "to_function", "to_module"),
    "calls": ("run", "pid", "caller", "caller_module", "callee", "callee_module", "count"),
    "functions": ("run", "pid", "function", "module", "branches", "calls"),
    "blocks": ("run", "pid", "start", "last", "count", "function", "module", "file", "line"),
}


def arrow_type(type: str, *, dictionary: bool = False) -> Any:
    """The pyarrow type of a column type (strings dictionary-encoded when asked)."""
    import pyarrow as pa

    if type == "string":
        return pa.dictionary(pa.int32(), pa.string()) if dictionary else pa.string()
    return {"int64": pa.int64(), "int32": pa.int32()}[type]


def arrow_schema(columns: tuple[Column, ...], *, dictionary: bool = False,
                 without: tuple[str, ...] = ()) -> Any:
    """The pyarrow schema of a table (``without``: columns left out, e.g. partitions)."""
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.type, dictionary=dictionary))
                      for c in columns if c.name not in without])
