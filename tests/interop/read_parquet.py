"""Reads studyflow's published Parquet files with independent readers (pyarrow and DuckDB)
and prints what they see as JSON: per file the columns, row count and footer metadata, whether
DuckDB decodes the same values as pyarrow, and any column chunk whose footer null count is not
its number of nulls."""
import json
import sys

import duckdb
import pyarrow.parquet as pq

out = {}
for path in sys.argv[1:]:
    table = pq.read_table(path)
    meta = pq.read_metadata(path).metadata or {}
    con = duckdb.connect()
    (duck_rows,) = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()
    duck_cols = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()]
    duck = con.sql("SELECT * FROM read_parquet($1)", params=[path]).to_arrow_table()
    same_values = duck.num_rows == table.num_rows and all(
        duck.column(i).cast(table.schema.field(i).type).equals(table.column(i))
        for i in range(table.num_columns)
    )
    parquet = pq.ParquetFile(path)
    null_count_mismatches = []
    for g in range(parquet.metadata.num_row_groups):
        group = parquet.read_row_group(g)
        for c in range(parquet.metadata.num_columns):
            chunk = parquet.metadata.row_group(g).column(c)
            if chunk.statistics is not None and chunk.statistics.has_null_count:
                if chunk.statistics.null_count != group.column(c).null_count:
                    null_count_mismatches.append(f"group {g} {chunk.path_in_schema}")
    # Per column: the encodings of its chunks, and for integer columns the exact sum of
    # the values pyarrow decodes (Python integers: no overflow).
    encodings = {}
    for g in range(parquet.metadata.num_row_groups):
        for c in range(parquet.metadata.num_columns):
            chunk = parquet.metadata.row_group(g).column(c)
            encodings.setdefault(chunk.path_in_schema, set()).update(chunk.encodings)
    # Dates as their days since 1970-01-01, as they are stored.
    int_sums = {
        name: str(sum(v for v in table.column(name).cast("int32" if str(t) == "date32[day]" else t).to_pylist() if v is not None))
        for name, t in zip(table.column_names, table.schema.types)
        if str(t) in ("int64", "int32", "date32[day]")
    }
    out[path] = {
        "encodings": {k: sorted(v) for k, v in encodings.items()},
        "int_sums": int_sums,
        "columns": table.column_names,
        "rows": table.num_rows,
        "duckdb_rows": duck_rows,
        "duckdb_columns": duck_cols,
        "duckdb_same_values": same_values,
        "null_count_mismatches": null_count_mismatches,
        "metadata": {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"studyflow.")},
    }
print(json.dumps(out))
