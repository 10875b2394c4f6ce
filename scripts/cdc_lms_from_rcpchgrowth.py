#!/usr/bin/env python3
"""Regenerate data/reference/cdc2000_lms.csv (CDC 2000 LMS tables, 2-20 y) from the figures
that the PyPI package rcpchgrowth ships in rcpchgrowth/data_tables/cdc2-20.json.

Only the public-domain figures are taken; no rcpchgrowth code is used or copied (the
package code is AGPL). Standard library only.

Usage:
    scripts/cdc_lms_from_rcpchgrowth.py                      # pip-downloads the newest wheel
    scripts/cdc_lms_from_rcpchgrowth.py --version 4.6.5      # a given release
    scripts/cdc_lms_from_rcpchgrowth.py SOURCE               # a .whl, an unzipped package
                                                             # folder, or cdc2-20.json itself
Options:
    --out PATH        where to write the CSV (default: data/reference/cdc2000_lms.csv)
    --check-cdc DIR   compare every L, M, S with CDC's own statage.csv, wtage.csv and
                      bmiagerev.csv in DIR; exit 1 on any difference

Figures are copied as text (parsed as Decimal), so the CSV keeps the full precision of
the source. Output columns: chart,sex,agemos,L,M,S with chart in {stature, weight, bmi}
and sex in {M, F}; agemos = decimal_age * 12, which rcpchgrowth stores rounded to
10 significant digits and this script snaps back to the half month CDC tabulates.
"""

import argparse
import csv
import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from decimal import Decimal
from pathlib import Path

JSON_IN_WHEEL = "rcpchgrowth/data_tables/cdc2-20.json"
# rcpchgrowth measurement name -> chart name in our CSV, and the CDC file of the same table.
CHARTS = [("height", "stature", "statage.csv"), ("weight", "weight", "wtage.csv"), ("bmi", "bmi", "bmiagerev.csv")]
SEXES = [("male", "M", "1"), ("female", "F", "2")]
REPO = Path(__file__).resolve().parent.parent


def load_json_text(source, version):
    """Returns (json text, description of where it came from)."""
    if source is None:
        tmp = tempfile.mkdtemp(prefix="rcpchgrowth-")
        spec = "rcpchgrowth" + (f"=={version}" if version else "")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, spec],
            check=True,
        )
        wheels = glob.glob(os.path.join(tmp, "rcpchgrowth-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one rcpchgrowth wheel in {tmp}, found {wheels}")
        source = wheels[0]
    path = Path(source)
    if path.is_dir():
        for candidate in (path / JSON_IN_WHEEL, path / "data_tables" / "cdc2-20.json", path / "cdc2-20.json"):
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8"), str(candidate)
        sys.exit(f"no cdc2-20.json under {path}")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(JSON_IN_WHEEL).decode("utf-8"), f"{path.name}:{JSON_IN_WHEEL}"
    return path.read_text(encoding="utf-8"), str(path)


def half_month(decimal_age):
    """decimal_age (years, rounded in the source) -> agemos on CDC's half-month grid."""
    months = decimal_age * 12
    snapped = (months * 2).to_integral_value() / 2
    if abs(months - snapped) > Decimal("1e-6"):
        sys.exit(f"decimal_age {decimal_age} is not on the half-month grid ({months} months)")
    # 24 -> "24", 24.5 -> "24.5", as CDC writes Agemos
    return format(snapped.normalize(), "f")


def rows_from_json(text):
    data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    rows = []
    for measurement, chart, _ in CHARTS:
        for sex_key, sex, _ in SEXES:
            table = data["measurement"][measurement][sex_key]
            if not table:
                sys.exit(f"no {measurement}/{sex_key} rows in the JSON")
            for r in table:
                rows.append((chart, sex, half_month(r["decimal_age"]), str(r["L"]), str(r["M"]), str(r["S"])))
    return rows


def check_against_cdc(rows, cdc_dir):
    """Every (chart, sex, agemos) in both sources, every L, M, S numerically equal."""
    ours = {(c, s, Decimal(a)): (l, m, sd) for c, s, a, l, m, sd in rows}
    theirs = {}
    for _, chart, filename in CHARTS:
        with open(os.path.join(cdc_dir, filename), newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                sex = {"1": "M", "2": "F"}[r["Sex"].strip()]
                theirs[(chart, sex, Decimal(r["Agemos"]))] = (r["L"], r["M"], r["S"])
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs:
            problems.append(f"{key}: only in {'rcpchgrowth' if key in ours else 'CDC'}")
            continue
        for name, a, b in zip("LMS", ours[key], theirs[key]):
            if Decimal(a) != Decimal(b):
                problems.append(f"{key} {name}: rcpchgrowth {a} vs CDC {b}")
    print(f"checked {len(theirs)} CDC rows ({3 * len(theirs)} figures): {len(problems)} differences", file=sys.stderr)
    for p in problems[:50]:
        print("  " + p, file=sys.stderr)
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", help=".whl, unzipped package folder, or cdc2-20.json")
    ap.add_argument("--version", help="rcpchgrowth release to download when no source is given")
    ap.add_argument("--out", default=str(REPO / "data" / "reference" / "cdc2000_lms.csv"))
    ap.add_argument("--check-cdc", metavar="DIR", help="folder with CDC's statage.csv, wtage.csv, bmiagerev.csv")
    args = ap.parse_args()

    text, origin = load_json_text(args.source, args.version)
    rows = rows_from_json(text)
    if args.check_cdc and not check_against_cdc(rows, args.check_cdc):
        sys.exit("rcpchgrowth and CDC disagree; build the table from CDC's files instead")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["chart", "sex", "agemos", "L", "M", "S"])
    w.writerows(rows)
    Path(args.out).write_text(buf.getvalue(), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out} from {origin}", file=sys.stderr)


if __name__ == "__main__":
    main()
