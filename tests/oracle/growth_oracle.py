#!/usr/bin/env python3
"""Independent oracle for studyflow's growth Z-scores (src/growth.rs): writes random
(sex, chart, age, measurement) cases with the Z-score computed by rcpchgrowth to
tests/fixtures/growth_oracle_cases.csv. The Rust unit test
`growth::tests::agrees_with_rcpchgrowth_oracle` checks |dZ| < 0.01 against that file.

Setup (rcpchgrowth is AGPL; it is only run here, never shipped or copied):
    python3 -m venv /tmp/oracle-venv
    /tmp/oracle-venv/bin/pip install rcpchgrowth==4.6.5
    /tmp/oracle-venv/bin/python tests/oracle/growth_oracle.py [--n 400] [--seed 20111]

How rcpchgrowth computes a CDC 2-20 y Z-score (rcpchgrowth 4.6.5, reference "cdc"):
- age in years = days / 365.25 (chronological_decimal_age), the same age as our
  days / 30.4375 months;
- L, M, S: linear interpolation for BMI, but cubic (4-point) interpolation for height and
  weight, so small differences from our linear interpolation are expected there;
- BMI above the 95th percentile: rcpchgrowth applies the CDC 2022 extended BMI method.
  studyflow uses plain LMS everywhere (DOMAIN 4.3), so for those cases the oracle Z is
  rcpchgrowth's plain LMS path (its fetch_lms + z_score) and the row's method says so;
  the extended-method Z is written alongside (z_cdc2022_extended) for information only.
"""

import argparse
import csv
import datetime as dt
import random
from pathlib import Path

import rcpchgrowth
from rcpchgrowth import chronological_decimal_age, measurement_for_z, sds_for_measurement
from rcpchgrowth.constants import BMI, CDC, FEMALE, HEIGHT, MALE, WEIGHT
from rcpchgrowth.global_functions import (
    fetch_lms,
    lms_value_array_for_measurement_for_reference,
    z_score,
)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "growth_oracle_cases.csv"
# our chart name -> rcpchgrowth measurement_method; our sex code -> rcpchgrowth sex
CHARTS = {"stature": HEIGHT, "weight": WEIGHT, "bmi": BMI}
SEXES = {"M": MALE, "F": FEMALE}
FIRST_DAY, LAST_DAY = 731, 7305  # 24.016 .. 240.0 months: inside the 2.0-20.0 y window
# Deterministic cases: the last table age (7305 days = 240.0 months), the first day past
# 24 months, and girls' stature where the interpolated L crosses 0 (~102.3 months).
FIXED = [
    ("M", "stature", 7305, 0.0), ("F", "weight", 7305, 1.2), ("M", "bmi", 7305, -0.8),
    ("F", "stature", 731, -2.1), ("M", "weight", 731, 0.4), ("F", "bmi", 731, 1.0),
    ("F", "stature", 3114, -1.5), ("F", "stature", 3115, 2.2), ("F", "stature", 3113, 0.3),
]


def plain_lms(chart, sex, age_years):
    table = lms_value_array_for_measurement_for_reference(
        reference=CDC, age=age_years, measurement_method=CHARTS[chart], sex=SEXES[sex]
    )
    return fetch_lms(age=age_years, lms_value_array_for_measurement=table)


def case(sex, chart, days, z_target, birth):
    date = birth + dt.timedelta(days=days)
    age = chronological_decimal_age(birth, date)
    lms = plain_lms(chart, sex, age)
    x = measurement_for_z(z_target, lms["l"], lms["m"], lms["s"])
    if x is None:  # 1 + L*S*z <= 0: no measurement has this z (large z, negative L)
        return None
    x = round(x, 2 if chart == "bmi" else 1)  # as measured (cm, kg to 0.1) or computed
    z = sds_for_measurement(reference=CDC, age=age, measurement_method=CHARTS[chart],
                            observation_value=x, sex=SEXES[sex])
    method, extended = "sds_for_measurement", ""
    if chart == "bmi":
        p95 = lms["m"] * (1 + lms["l"] * lms["s"] * 1.645) ** (1 / lms["l"])
        if x > p95:
            method, extended = "plain_lms(fetch_lms+z_score)", repr(float(z))
            z = z_score(lms["l"], lms["m"], lms["s"], x)
    return [sex, chart, birth.isoformat(), date.isoformat(), days, repr(float(x)), repr(float(z)), method, extended]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="random cases (plus fixed edge cases)")
    ap.add_argument("--seed", type=int, default=20111)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rng = random.Random(args.seed)

    def birth():
        return dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(0, 5000))

    rows = [case(s, c, d, z, birth()) for s, c, d, z in FIXED]
    while len(rows) < len(FIXED) + args.n:
        row = case(rng.choice("MF"), rng.choice(list(CHARTS)), rng.randint(FIRST_DAY, LAST_DAY),
                   rng.uniform(-4.0, 4.0), birth())
        if row is not None:
            rows.append(row)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        f.write(f"# Oracle cases for src/growth.rs, written by tests/oracle/growth_oracle.py "
                f"(seed {args.seed}, n {args.n}).\n")
        f.write(f"# z_rcpchgrowth from rcpchgrowth {rcpchgrowth.__version__} (AGPL; run only, not "
                f"shipped), reference cdc; age = (date - birth_date) days.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sex", "chart", "birth_date", "date", "age_days", "value", "z_rcpchgrowth", "method",
                    "z_cdc2022_extended"])
        w.writerows(rows)
    print(f"wrote {len(rows)} cases to {args.out}")


if __name__ == "__main__":
    main()
