"""``branchtrace export``: the tables of trace files as hive-partitioned Parquet.

Layout, one directory per table, partitioned by run (and ``branches`` by thread too)::

    DIR/branches/run=R/tid=T/part-0.parquet   ordered by seq, written chunk by chunk
    DIR/addresses/run=R/part-0.parquet
    DIR/runs/run=R/part-0.parquet              (and processes/, threads/)
    DIR/views.sql                              the tables and derived views, for DuckDB

The partition columns are in the paths only (as Hive, Spark and DuckDB write them).
A run is staged in ``DIR/.partial-R`` and moved into place when complete, so a
directory never holds half a run; a run already in the directory is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .addresses import Addresses
from .batches import branch_schema, thread_batches
from .runs import Run, process_rows, run_rows, thread_rows
from .schema import (
    DERIVED,
    PARTITIONS,
    PROCESSES,
    RUNS,
    TABLES,
    THREADS,
    arrow_schema,
)

PART = "part-0.parquet"
_HIVE_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER"}


def views_sql() -> str:
    """DuckDB statements that define every table and view over an export directory
    (paths relative to it: run them there, or after ``SET file_search_path``)."""
    out = ["-- branchtrace export: the tables of docs/sql.md over this directory.",
           "-- DuckDB: run these in this directory (duckdb -init views.sql), or after",
           "-- SET file_search_path = '<this directory>'."]
    for name, columns in TABLES.items():
        parts = PARTITIONS[name]
        types = {c.name: _HIVE_TYPES[c.type] for c in columns if c.name in parts}
        hive = ", ".join(f"'{k}': {v}" for k, v in types.items())
        glob = "/".join([name] + ["*"] * len(parts) + ["*.parquet"])
        cols = ", ".join(c.name for c in columns)
        out.append(f"CREATE OR REPLACE VIEW {name} AS SELECT {cols} FROM read_parquet("
                   f"'{glob}', hive_partitioning = true, hive_types = {{{hive}}});")
    for name, sql in DERIVED.items():
        out.append(f"CREATE OR REPLACE VIEW {name} AS{sql};")
    return "\n".join(out) + "\n"


def _writer_options() -> dict[str, Any]:
    names = [c.name for c in TABLES["branches"] if c.name not in PARTITIONS["branches"]]
    # seq counts up by one: delta encoding makes it nearly free; the rest repeats heavily
    return {"compression": "zstd", "store_schema": False,
            "use_dictionary": [n for n in names if n != "seq"],
            "column_encoding": {"seq": "DELTA_BINARY_PACKED"}}


def _write_small(path: Path, rows: list[dict[str, Any]], columns: Any, parts: tuple[str, ...]
                 ) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=arrow_schema(columns))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop_columns(list(parts)), path / PART, compression="zstd")


def export_run(run: Run, root: Path, warnings: list[str]) -> int:
    """Write ``run`` under ``root``; the number of branches written. The symbolizer's
    warnings are added to ``warnings``."""
    import pyarrow.parquet as pq

    for table in TABLES:
        if (root / table / f"run={run.id}").exists():
            raise UsageError(f"{root} already holds run {run.id} ({root / table / f'run={run.id}'}"
                             f"): remove it, or export into another directory")
    stage = root / f".partial-{run.id}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        addresses = Addresses(run)
        n = 0
        without = PARTITIONS["branches"]
        schema = branch_schema(without=without)
        for tid in run.tids:
            where = stage / "branches" / f"run={run.id}" / f"tid={tid}"
            where.mkdir(parents=True)
            with pq.ParquetWriter(where / PART, schema, **_writer_options()) as writer:
                for batch in thread_batches(run, addresses, tid, without=without):
                    writer.write_batch(batch)
                    n += batch.num_rows
        atable = addresses.table()
        (stage / "addresses" / f"run={run.id}").mkdir(parents=True)
        pq.write_table(atable.drop_columns(["run"]),
                       stage / "addresses" / f"run={run.id}" / PART, compression="zstd")
        for name, columns, rows in (("runs", RUNS, run_rows(run)),
                                    ("processes", PROCESSES, process_rows(run)),
                                    ("threads", THREADS, thread_rows(run))):
            _write_small(stage / name / f"run={run.id}", rows, columns, PARTITIONS[name])
        for table in TABLES:
            src = stage / table / f"run={run.id}"
            if src.exists():
                (root / table).mkdir(exist_ok=True)
                os.rename(src, root / table / f"run={run.id}")
        warnings.extend(addresses.symbolizer.warnings)
        return n
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export(runs: list[Run], root: str, warnings: list[str]) -> int:
    """Export every run into the directory ``root`` (made if missing); branches written."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise UsageError(f"-o {root}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"-o {root}: cannot make it: {err.strerror or err}") from None
    total = sum(export_run(run, path, warnings) for run in runs)
    (path / "views.sql").write_text(views_sql())
    return total
