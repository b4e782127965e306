"""A query's result, written batch by batch: a table (for a terminal), CSV, JSON or
Parquet. Only the table format holds its rows (at most :data:`TABLE_ROWS`); the others
stream whatever the number of rows."""

from __future__ import annotations

import json
from typing import IO, Any

FORMATS = ("table", "csv", "json", "parquet")
BINARY = {"parquet"}
TABLE_ROWS = 40
_BATCH_ROWS = 1 << 16


def _batches(rel: Any) -> Any:
    return rel.to_arrow_reader(_BATCH_ROWS) if hasattr(rel, "to_arrow_reader") \
        else rel.fetch_record_batch(_BATCH_ROWS)


def _plain(reader: Any) -> Any:
    """Batches with dictionary columns decoded (CSV and Parquet want plain strings)."""
    import pyarrow as pa

    schema = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type)
                        else f for f in reader.schema])
    return schema, (b.cast(schema) if b.schema != schema else b for b in reader)


def write_table(con: Any, rel: Any, out: IO[str], max_rows: int = TABLE_ROWS) -> None:
    """DuckDB's box rendering of the first ``max_rows`` rows, and how many more there are."""
    head = rel.limit(max_rows + 1).to_arrow_table() if hasattr(rel, "to_arrow_table") \
        else rel.limit(max_rows + 1).arrow()
    more = head.num_rows > max_rows
    shown = head.slice(0, max_rows)
    view = con.from_arrow(shown)
    out.write(str(view))
    if more:
        out.write(f"(the first {max_rows} rows; for all of them: --format csv, json or "
                  f"parquet, or LIMIT)\n")


def write_csv(rel: Any, out: IO[str]) -> None:
    """CSV with a header line, written to the bytes under the text stream ``out``."""
    import pyarrow.csv as csv

    schema, batches = _plain(_batches(rel))
    out.flush()
    sink = getattr(out, "buffer", out)
    with csv.CSVWriter(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def write_json(rel: Any, out: IO[str]) -> None:
    """A JSON array of one object per row, written row by row."""
    first = True
    out.write("[")
    for batch in _batches(rel):
        for row in batch.to_pylist():
            out.write("\n" if first else ",\n")
            out.write(json.dumps(row, default=str))
            first = False
    out.write("\n]\n" if not first else "]\n")


def write_parquet(rel: Any, out: IO[bytes]) -> None:
    import pyarrow.parquet as pq

    schema, batches = _plain(_batches(rel))
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
