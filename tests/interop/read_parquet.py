"""Reads studyflow's published Parquet files with independent readers (pyarrow and DuckDB)
and prints what they see as JSON: per file the columns, row count and footer metadata."""
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
    out[path] = {
        "columns": table.column_names,
        "rows": table.num_rows,
        "duckdb_rows": duck_rows,
        "duckdb_columns": duck_cols,
        "metadata": {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"studyflow.")},
    }
print(json.dumps(out))
