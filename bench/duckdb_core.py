"""DuckDB side of `make bench`: runs bench/duckdb_core.sql, and summarises published tables.

    duckdb_core.py run --data DIR --out DIR --run-date YYYY-MM-DD [--threads N]
        runs the core work in DuckDB (in memory) and writes its tables to OUT as Parquet;
        prints one JSON line: {"seconds": ..., "steps": {...}}.
    duckdb_core.py aggregates DIR
        prints, as JSON, the aggregates `make bench` compares between DuckDB and studyflow
        (row counts, totals of steroid mg, converted lab rows, rows per phase) over the
        Parquet tables in DIR (DuckDB's out folder, or studyflow's out/current).

Needs the `duckdb` package (bench/run.py installs it into bench-data/venv).
"""

import argparse
import json
import os
import sys
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> SQL over the table files of a folder; `{t}` is replaced by read_parquet('DIR/t.parquet').
AGGREGATES = {
    "rows.subjects": "SELECT count(*) FROM {subjects}",
    "rows.dosing": "SELECT count(*) FROM {dosing}",
    "rows.steroids": "SELECT count(*) FROM {steroids}",
    "rows.diary": "SELECT count(*) FROM {diary}",
    "rows.visits": "SELECT count(*) FROM {visits}",
    "rows.labs": "SELECT count(*) FROM {labs}",
    "rows.questionnaires": "SELECT count(*) FROM {questionnaires}",
    "labs_std.rows (converted lab rows)": "SELECT count(*) FROM {labs_std}",
    "labs_std.sum AVAL": "SELECT sum(AVAL) FROM {labs_std}",
    "labs_std.censored": "SELECT count(CENSOR) FROM {labs_std}",
    "questionnaires_std.rows": "SELECT count(*) FROM {questionnaires_std}",
    "questionnaires_std.sum AVAL": "SELECT sum(AVAL) FROM {questionnaires_std}",
    "visits_std.rows": "SELECT count(*) FROM {visits_std}",
    "visits_std.sum weight_kg": "SELECT sum(weight_kg) FROM {visits_std}",
    "diary_scored.scored days": "SELECT count(DIARYSCORE) FROM {diary_scored}",
    "diary_scored.sum DIARYSCORE": "SELECT sum(DIARYSCORE) FROM {diary_scored}",
    "steroid_daily.rows": "SELECT count(*) FROM {steroid_daily}",
    "steroid_daily.total PREDMG (mg)": "SELECT sum(PREDMG) FROM {steroid_daily}",
    "steroid_daily.days with PREDMG": "SELECT count(PREDMG) FROM {steroid_daily}",
    "steroid_daily.sum PREDMGKG": "SELECT sum(PREDMGKG) FROM {steroid_daily}",
    "phases.rows": "SELECT count(*) FROM {phases}",
    "phases.days in phase 1": "SELECT sum(ADURN) FROM {phases} WHERE APHASEN = 1",
    "phases.days in phase 2": "SELECT sum(ADURN) FROM {phases} WHERE APHASEN = 2",
    "phases.days in phase 3": "SELECT sum(ADURN) FROM {phases} WHERE APHASEN = 3",
    "phases.days in phase 4": "SELECT sum(ADURN) FROM {phases} WHERE APHASEN = 4",
    "phase_summary.rows": "SELECT count(*) FROM {phase_summary}",
    "phase_summary.values in phase 1": "SELECT sum(N) FROM {phase_summary} WHERE APHASEN = 1",
    "phase_summary.values in phase 2": "SELECT sum(N) FROM {phase_summary} WHERE APHASEN = 2",
    "phase_summary.values in phase 3": "SELECT sum(N) FROM {phase_summary} WHERE APHASEN = 3",
    "phase_summary.values in phase 4": "SELECT sum(N) FROM {phase_summary} WHERE APHASEN = 4",
    "phase_summary.sum MEDIAN": "SELECT sum(MEDIAN) FROM {phase_summary}",
}


def run(args):
    os.makedirs(args.out, exist_ok=True)
    with open(args.sql, encoding="utf-8") as f:
        sql = f.read()
    data = os.path.abspath(args.data).replace("'", "''")
    out = os.path.abspath(args.out).replace("'", "''")
    sql = sql.replace("${DATA}", data).replace("${OUT}", out).replace("${RUN_DATE}", args.run_date)
    started = time.perf_counter()
    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    con.execute("SET preserve_insertion_order = false")
    steps = {}
    for statement in duckdb.extract_statements(sql):
        t0 = time.perf_counter()
        con.execute(statement)
        lines = [x for x in statement.query.splitlines() if not x.strip().startswith("--")]
        words = " ".join(lines).split()
        if words[0].upper() == "CREATE" and words[1].upper() == "TABLE":
            label = words[2]
        elif words[0].upper() == "COPY":
            label = "write parquet"
        else:
            label = "setup"
        steps[label] = steps.get(label, 0.0) + time.perf_counter() - t0
    con.close()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "steps": steps}))


# Tables the reference pipeline publishes under its ADaM name, with the same columns.
# A studyflow table that answers for one of DuckDB's when studyflow does not publish that one:
# the diary score and the steroid series are published once, with their phase (same rows,
# same value columns).
ALIASES = {"phases": "adph", "diary_scored": "addiary", "steroid_daily": "adster"}


def aggregates(args):
    con = duckdb.connect()
    result = {}
    for name, query in AGGREGATES.items():
        tables = {}
        missing = False
        for table in [p.split("}")[0] for p in query.split("{")[1:]]:
            path = os.path.join(args.dir, f"{table}.parquet")
            if not os.path.exists(path) and table in ALIASES:
                path = os.path.join(args.dir, f"{ALIASES[table]}.parquet")
            if not os.path.exists(path):
                missing = True
            tables[table] = "read_parquet('%s')" % path.replace("'", "''")
        if missing:
            result[name] = None
            continue
        value = con.execute(query.format(**tables)).fetchone()[0]
        result[name] = float(value) if value is not None else None
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--run-date", required=True)
    r.add_argument("--threads", type=int)
    r.add_argument("--sql", default=os.path.join(HERE, "duckdb_core.sql"))
    a = sub.add_parser("aggregates")
    a.add_argument("dir")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        aggregates(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
