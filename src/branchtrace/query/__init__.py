"""SQL over trace files: an embedded DuckDB fed chunk by chunk (``branchtrace sql``), and
the same tables as hive-partitioned Parquet (``branchtrace export``). docs/sql.md
describes the tables.

* :mod:`.schema` - the tables' columns and the derived views' SQL;
* :mod:`.runs` - the trace files of a query (runs), their small tables, thread -> pid;
* :mod:`.addresses` - distinct addresses symbolized once, and the per-chunk lookup;
* :mod:`.batches` - a run's branches as Arrow record batches, and the rescannable source;
* :mod:`.session` - the DuckDB session; :mod:`.output` - writing a result;
* :mod:`.export` - writing Parquet.

DuckDB and pyarrow are the optional ``sql`` extra: nothing here imports them at import
time of the package (the CLI must not pay for them).
"""
