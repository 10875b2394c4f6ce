#!/usr/bin/env python3
"""`make bench`: studyflow against the floor (polars CSV -> Parquet) and hand-written DuckDB SQL.

Generates a registry-scale cohort once (bench-data/cohort-<S>x<Y>/), then runs, alternating and
repeated (--rounds), each in its own process with its wall time and peak memory (max RSS):
  floor       examples/floor.rs: every raw file read as strings and written to Parquet;
  duckdb      bench/duckdb_core.sql: the core work by hand in DuckDB (PyPI, in bench-data/venv);
  reference   studyflow on pipelines/reference.yaml as it is on this branch, cold;
  core        studyflow on reference.yaml + bench/core_stages.yaml (the same work as the
              DuckDB SQL), cold: a fresh --out folder;
  rerun       core again on the same --out, nothing changed;
  one-file    core again on the same --out after one site's file changed;
  threads=1   core, cold, with --threads 1;
  batched-N   core, cold, with --batch-subjects N (500 and 50 by default): the stages after the
              ingests on 500 subjects at a time; its aggregates are checked against core's.
Prints medians, ratios against the targets of PIPELINE.md section 5, the per-stage profile of
the core run (from its manifest.json), and checks that DuckDB and studyflow agree on aggregates.
Standard library only; DuckDB runs inside its own venv interpreter.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "bench")
DEFAULT_TARGET = os.environ.get(
    "CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache", "studyflow-target")
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure(cmd, log_path=None, env=None):
    """Runs cmd; returns (wall s, peak RSS MB, CPU s, stdout). Fails loudly on a non-zero exit."""
    with open(log_path or os.devnull, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = ""
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-20:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    # ru_maxrss is in KiB on Linux; CPU time (user + system) is less sensitive than wall time
    # to other work on a shared machine.
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024.0, cpu, out.decode("utf-8", "replace")


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    commit = subprocess.run(
        ["git", "-C", ROOT, "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_gib, 1), "commit": commit}


def ensure_duckdb(bench_data):
    venv = os.path.join(bench_data, "venv")
    py = os.path.join(venv, "bin", "python")
    usable = os.path.exists(py) and subprocess.run(
        [py, "-c", "import duckdb"], capture_output=True).returncode == 0
    if not usable:
        log(f"installing duckdb from PyPI into {venv}")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "duckdb"], check=True)
    version = subprocess.run(
        [py, "-c", "import duckdb; print(duckdb.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return py, version


def csv_files(cohort):
    files = []
    for site in sorted(os.listdir(cohort)):
        folder = os.path.join(cohort, site)
        if site == "truth" or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".csv"):
                files.append(os.path.join(folder, name))
    return files


def ensure_cohort(args, bench_data):
    cohort = os.path.join(bench_data, f"cohort-{args.subjects}x{args.years}")
    marker = os.path.join(cohort, ".bench-generate.json")
    if os.path.exists(marker):
        with open(marker) as f:
            gen = json.load(f)
        gen["reused"] = True
        return cohort, gen
    if os.path.exists(cohort):
        shutil.rmtree(cohort)
    log(f"generating {args.subjects} subjects x {args.years} years into {cohort}")
    cmd = [args.bin, "generate", "--out", cohort, "--subjects", str(args.subjects),
           "--years", str(args.years), "--sites", "3", "--seed", str(args.seed)]
    wall, rss, cpu, out = measure(cmd, os.path.join(bench_data, "logs", "generate.log"))
    files = csv_files(cohort)
    gen = {"seconds": wall, "rss_mb": rss, "cpu_seconds": cpu, "command": " ".join(cmd[1:]),
           "csv_bytes": sum(os.path.getsize(f) for f in files), "csv_files": len(files),
           "summary": out.strip()}
    with open(marker, "w") as f:
        json.dump(gen, f, indent=1)
    gen["reused"] = False
    return cohort, gen


def core_pipeline(bench_data):
    """bench-data/core.yaml: the reference pipeline plus bench/core_stages.yaml.

    Written next to pipelines/ (one level under the repository), so relative paths in the
    reference pipeline still resolve. Returns (path, note)."""
    with open(os.path.join(ROOT, "pipelines", "reference.yaml"), encoding="utf-8") as f:
        reference = f.read()
    with open(os.path.join(HERE, "core_stages.yaml"), encoding="utf-8") as f:
        extra = f.read()
    names = [line.split(":", 1)[1].strip() for line in extra.splitlines()
             if line.startswith("  - name: ")]
    taken = [n for n in names if f"- name: {n}\n" in reference]
    if taken or "kind: steroid_equivalent" in reference:
        note = ("pipelines/reference.yaml already has harmonisation stages ("
                + ", ".join(taken or ["steroid_equivalent"])
                + "); the core run uses it unchanged and some aggregates may be n/a")
        return os.path.join(ROOT, "pipelines", "reference.yaml"), note
    path = os.path.join(bench_data, "core.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(reference.rstrip("\n") + "\n" + extra)
    return path, "reference.yaml + bench/core_stages.yaml"


def changed_file(cohort, name_glob):
    """The newest export of the stream named by name_glob (`site/stream`) in the cohort."""
    site, stream = name_glob.split("/")
    folder = os.path.join(cohort, site)
    candidates = sorted(n for n in os.listdir(folder) if n.startswith(stream + "_"))
    return os.path.join(folder, candidates[-1])


def touch_file(path):
    """Appends a copy of the file's last line (a collapsed duplicate); returns the original bytes."""
    with open(path, "rb") as f:
        original = f.read()
    body = original.rstrip(b"\r\n")
    last = body.rsplit(b"\n", 1)[-1].rstrip(b"\r")
    eol = b"\r\n" if original.endswith(b"\r\n") else b"\n"
    with open(path, "wb") as f:
        f.write(body + eol + last + eol)
    return original


def stage_profile(manifest):
    """Per-stage seconds, the critical path through the stages' inputs (a stage starts when the
    stages it reads have finished) and the rest (row fate, rejects, manifest)."""
    stages = manifest["stages"]
    finish = {}
    for s in stages:  # manifest stages are in plan order: inputs first
        start = max((finish[i] for i in s["inputs"] if i in finish), default=0.0)
        finish[s["name"]] = start + s["seconds"]
    critical = max(finish.values(), default=0.0)
    return {"stages": {s["name"]: {"kind": s["kind"], "seconds": s["seconds"],
                                   "rows_out": s["rows_out"], "status": s["status"]} for s in stages},
            "critical_path_seconds": critical, "manifest_seconds": manifest["seconds"]}


def read_manifest(out):
    with open(os.path.join(out, "current", "manifest.json")) as f:
        return json.load(f)


def fmt_ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def main():
    p = argparse.ArgumentParser(description="studyflow benchmark (make bench)")
    p.add_argument("--subjects", type=int, default=5000)
    p.add_argument("--years", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run-date", default="2026-11-25")
    p.add_argument("--bench-data", default=os.path.join(ROOT, "bench-data"))
    p.add_argument("--bin", default=os.path.join(DEFAULT_TARGET, "release", "studyflow"))
    p.add_argument("--floor", default=os.path.join(DEFAULT_TARGET, "release", "examples", "floor"))
    p.add_argument("--change", default="nih/labs",
                   help="site/stream whose newest export changes for the one-file re-run")
    p.add_argument("--skip", default="", help="comma-separated runs to skip (e.g. threads=1)")
    p.add_argument("--batch-subjects", default="500,50",
                   help="comma-separated subjects per batch of the batched runs, one run each "
                        "(run --batch-subjects)")
    args = p.parse_args()
    batch_sizes = [int(x) for x in args.batch_subjects.split(",") if x.strip()]
    batched = [f"batched-{n}" for n in batch_sizes]
    skip = set(filter(None, args.skip.split(",")))

    bench_data = os.path.abspath(args.bench_data)
    os.makedirs(os.path.join(bench_data, "logs"), exist_ok=True)
    for exe in (args.bin, args.floor):
        if not os.path.exists(exe):
            raise SystemExit(f"{exe} is missing: build it with "
                             "`cargo build --release --bin studyflow --example floor`")
    info = machine()
    py, duckdb_version = ensure_duckdb(bench_data)
    cohort, gen = ensure_cohort(args, bench_data)
    files = csv_files(cohort)
    csv_bytes = sum(os.path.getsize(f) for f in files)
    core_yaml, core_note = core_pipeline(bench_data)
    reference_yaml = os.path.join(ROOT, "pipelines", "reference.yaml")
    change = changed_file(cohort, args.change)
    change_bytes = os.path.getsize(change)
    run_date = ["--run-date", args.run_date]
    outs = {name: os.path.join(bench_data, "out", name)
            for name in ["floor", "duckdb", "reference", "core", "threads1", *batched]}

    def fresh(path):
        if os.path.exists(path):
            shutil.rmtree(path)
        return path

    def studyflow(yaml, out, extra=(), after=()):
        return [args.bin, *extra, "run", yaml, "--data", cohort, "--out", out, *run_date, *after]

    results = {}  # name -> list of (seconds, rss_mb, cpu_seconds)
    manifests = {}
    duckdb_steps = []

    def record(name, wall, rss, cpu):
        results.setdefault(name, []).append((wall, rss, cpu))
        log(f"  {name:<10} {wall:8.2f} s  {rss:8.0f} MB  {cpu:8.2f} s CPU")

    load_before = os.getloadavg()
    log(f"cohort {cohort}: {len(files)} files, {csv_bytes / 1e6:.0f} MB of CSV")
    for r in range(1, args.rounds + 1):
        log(f"round {r}/{args.rounds}")
        logs = os.path.join(bench_data, "logs")
        wall, rss, cpu, _ = measure([args.floor, reference_yaml, cohort, fresh(outs["floor"])],
                               os.path.join(logs, f"floor-{r}.log"))
        record("floor", wall, rss, cpu)
        wall, rss, cpu, out = measure([py, os.path.join(HERE, "duckdb_core.py"), "run", "--data", cohort,
                                  "--out", fresh(outs["duckdb"]), "--run-date", args.run_date],
                                 os.path.join(logs, f"duckdb-{r}.log"))
        record("duckdb", wall, rss, cpu)
        duckdb_steps.append(json.loads(out.strip().splitlines()[-1]))
        wall, rss, cpu, _ = measure(studyflow(reference_yaml, fresh(outs["reference"])),
                               os.path.join(logs, f"reference-{r}.log"))
        record("reference", wall, rss, cpu)
        manifests.setdefault("reference", []).append(read_manifest(outs["reference"]))
        wall, rss, cpu, _ = measure(studyflow(core_yaml, fresh(outs["core"])),
                               os.path.join(logs, f"core-{r}.log"))
        record("core", wall, rss, cpu)
        manifests.setdefault("core", []).append(read_manifest(outs["core"]))
        wall, rss, cpu, _ = measure(studyflow(core_yaml, outs["core"]),
                               os.path.join(logs, f"rerun-{r}.log"))
        record("rerun", wall, rss, cpu)
        manifests.setdefault("rerun", []).append(read_manifest(outs["core"]))
        original = touch_file(change)
        try:
            wall, rss, cpu, _ = measure(studyflow(core_yaml, outs["core"]),
                                   os.path.join(logs, f"one-file-{r}.log"))
        finally:
            with open(change, "wb") as f:
                f.write(original)
        record("one-file", wall, rss, cpu)
        manifests.setdefault("one-file", []).append(read_manifest(outs["core"]))
        for n, name in zip(batch_sizes, batched):
            if "batched" in skip:
                break
            wall, rss, cpu, _ = measure(
                studyflow(core_yaml, fresh(outs[name]), after=["--batch-subjects", str(n)]),
                os.path.join(logs, f"{name}-{r}.log"))
            record(name, wall, rss, cpu)
        if "threads=1" not in skip:
            wall, rss, cpu, _ = measure(studyflow(core_yaml, fresh(outs["threads1"]), ["--threads", "1"]),
                                   os.path.join(logs, f"threads1-{r}.log"))
            record("threads=1", wall, rss, cpu)

    load_after = os.getloadavg()
    med = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    peak = {k: max(r[1] for r in v) for k, v in results.items()}
    cpu_med = {k: statistics.median(r[2] for r in v) for k, v in results.items()}
    lo = {k: min(r[0] for r in v) for k, v in results.items()}
    hi = {k: max(r[0] for r in v) for k, v in results.items()}

    # Aggregates: DuckDB's tables against studyflow's core run.
    agg_duck = json.loads(subprocess.run([py, os.path.join(HERE, "duckdb_core.py"), "aggregates",
                                          outs["duckdb"]], capture_output=True, text=True,
                                         check=True).stdout)
    agg_sf = json.loads(subprocess.run([py, os.path.join(HERE, "duckdb_core.py"), "aggregates",
                                        os.path.join(outs["core"], "current")],
                                       capture_output=True, text=True, check=True).stdout)

    # The batched run against the cold whole run of the same files (`reference`; the core
    # folder last holds the one-file run, whose lab file had a line more).
    def aggregates(k):
        return json.loads(subprocess.run(
            [py, os.path.join(HERE, "duckdb_core.py"), "aggregates",
             os.path.join(outs[k], "current")],
            capture_output=True, text=True, check=True).stdout)
    agg_batched = {}
    agg_whole = None
    if "batched" not in skip and batched:
        agg_whole = aggregates("reference")
        agg_batched = {name: aggregates(name) for name in batched}
    reused = {k: sum(1 for m in ms for s in m["stages"] if s["status"] != "ran")
              for k, ms in manifests.items()}
    profile = stage_profile(manifests["core"][-1])
    # Median per stage over the rounds.
    for name, s in profile["stages"].items():
        s["seconds"] = statistics.median(
            next(x["seconds"] for x in m["stages"] if x["name"] == name) for m in manifests["core"])
    ref_profile = stage_profile(manifests["reference"][-1])

    mb = csv_bytes / 1e6
    print()
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['mem_gib']} GiB RAM; "
          f"commit {info['commit']}; duckdb {duckdb_version}")
    print(f"cohort: {args.subjects} subjects x {args.years} years, 3 sites, seed {args.seed}: "
          f"{len(files)} CSV files, {mb:.0f} MB (raw CSV size)")
    gen_note = " (measured when the cohort was generated; reused)" if gen["reused"] else ""
    print(f"generate: {gen['seconds']:.2f} s, peak {gen['rss_mb']:.0f} MB{gen_note}")
    print(f"core pipeline: {core_note}")
    print(f"rounds: {args.rounds}, alternating; wall time of the whole process, page cache warm; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"(above {info['cores']} means other work shared the cores)")
    print()
    rows = [
        ("floor", "floor: polars CSV -> Parquet, strings"),
        ("duckdb", "DuckDB SQL, core work"),
        ("reference", "studyflow reference.yaml, cold"),
        ("core", "studyflow core, cold"),
        ("rerun", "studyflow core, nothing changed"),
        ("one-file", "studyflow core, 1 file changed"),
        ("threads=1", "studyflow core, cold, --threads 1"),
        *((name, f"studyflow core, cold, --batch-subjects {n}")
          for n, name in zip(batch_sizes, batched)),
    ]
    print("| run | median s | min s | max s | CPU s (median) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, label in rows:
        if key in med:
            print(f"| {label} | {med[key]:.2f} | {lo[key]:.2f} | {hi[key]:.2f} "
                  f"| {cpu_med[key]:.1f} | {peak[key]:.0f} |")
    print()
    change_rel = os.path.relpath(change, cohort)
    print("ratios (targets of PIPELINE.md section 5):")
    print(f"  studyflow core / floor       {fmt_ratio(med['core'], med['floor'])}   (target <= 1.5)")
    print(f"  studyflow reference / floor  {fmt_ratio(med['reference'], med['floor'])}")
    print(f"  studyflow core / DuckDB      {fmt_ratio(med['core'], med['duckdb'])}   (target < 1)")
    print(f"  same ratios on CPU seconds:  core / floor {fmt_ratio(cpu_med['core'], cpu_med['floor'])}, "
          f"core / DuckDB {fmt_ratio(cpu_med['core'], cpu_med['duckdb'])}")
    print(f"  peak RSS core / raw CSV      {fmt_ratio(peak['core'], mb)}   (target well below 1)")
    print(f"  peak RSS DuckDB / raw CSV    {fmt_ratio(peak['duckdb'], mb)}")
    print(f"  nothing-changed / full run   {fmt_ratio(med['rerun'], med['core'])}   (target < 0.02)")
    print(f"  one-file-changed / full run  {fmt_ratio(med['one-file'], med['core'])}   "
          f"(the file: {change_rel}, {change_bytes / 1e6:.1f} MB = "
          f"{100 * change_bytes / csv_bytes:.1f} % of the CSV)")
    if "threads=1" in med:
        print(f"  thread scaling: --threads 1 / {info['cores']} threads = "
              f"{fmt_ratio(med['threads=1'], med['core'])}")
    for n, name in zip(batch_sizes, batched):
        if name in med:
            print(f"  subject batches of {n}: time / whole run "
                  f"{fmt_ratio(med[name], med['core'])}, peak RSS / raw CSV "
                  f"{fmt_ratio(peak[name], mb)}, batched / floor {fmt_ratio(med[name], med['floor'])}")
    for k in ("rerun", "one-file"):
        if reused.get(k, 0) == 0:
            print(f"  note: the {k} runs reused no stage (no cache on this branch yet), "
                  "so they are full runs")
    print()
    print("studyflow core run, per stage (median s over rounds; independent stages run concurrently):")
    by_time = sorted(profile["stages"].items(), key=lambda kv: -kv[1]["seconds"])
    for name, s in by_time:
        print(f"  {name:<22} {s['kind']:<19} {s['seconds']:7.2f} s  "
              f"{s['rows_out']:>10} rows")
    rest = profile["manifest_seconds"] - profile["critical_path_seconds"]
    print(f"  critical path through the stages' inputs: {profile['critical_path_seconds']:.2f} s; "
          f"row fate + rejects + sort + Parquet + manifest: {rest:.2f} s; "
          f"manifest total {profile['manifest_seconds']:.2f} s, process {med['core']:.2f} s")
    print(f"  (reference.yaml alone: critical path {ref_profile['critical_path_seconds']:.2f} s, "
          f"finish {ref_profile['manifest_seconds'] - ref_profile['critical_path_seconds']:.2f} s)")
    steps = {}
    for d in duckdb_steps:
        for k, v in d["steps"].items():
            steps.setdefault(k, []).append(v)
    top = sorted(((statistics.median(v), k) for k, v in steps.items()), reverse=True)[:8]
    print("DuckDB steps (median s): " + ", ".join(f"{k} {v:.2f}" for v, k in top))
    print()
    print("DuckDB vs studyflow (core run) on aggregates:")
    agree = True
    for k, a in agg_duck.items():
        b = agg_sf.get(k)
        if a is None or b is None:
            verdict = "n/a"
        elif a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a)):
            verdict = "same"
        else:
            verdict = "DIFFERENT"
            agree = False
        print(f"  {k:<38} duckdb {a if a is not None else 'n/a'!s:>22}  "
              f"studyflow {b if b is not None else 'n/a'!s:>22}  {verdict}")
    print("  => " + ("they agree" if agree else "they DISAGREE: see above"))
    for name, agg in agg_batched.items():
        # Sums of floats differ in the last bits with the order a reader adds them in (the
        # row groups of a batched table follow the batches): the same tolerance as above.
        def close(a, b):
            return a == b or (a is not None and b is not None
                              and abs(a - b) <= 1e-9 * max(1.0, abs(a)))
        differ = [k for k in agg_whole if not close(agg_whole.get(k), agg.get(k))]
        print(f"studyflow {name} vs the cold whole run, aggregates: "
              + ("the same" if not differ else "DIFFERENT: " + ", ".join(differ)))
        agree = agree and not differ

    stamp = time.strftime("%Y%m%dT%H%M%S")
    with open(os.path.join(bench_data, f"results-{stamp}.json"), "w") as f:
        json.dump({"machine": info, "load": [load_before, load_after], "generate": gen, "csv_bytes": csv_bytes, "runs": results,
                   "median": med, "cpu_median": cpu_med, "peak_rss_mb": peak, "profile": profile,
                   "duckdb_steps": duckdb_steps, "aggregates": {"duckdb": agg_duck,
                                                                "studyflow": agg_sf,
                                                                "batched": agg_batched},
                   "core_pipeline": core_note, "changed_file": change_rel}, f, indent=1)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
