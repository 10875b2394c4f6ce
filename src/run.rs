//! Executing a plan: stages run wave by wave (independent stages concurrently), then row fate
//! is reconciled, reject limits are checked, and the run is published atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use polars::prelude::*;
use rayon::prelude::*;

use crate::error::{DataError, RunError};
use crate::log::Log;
use crate::manifest::{FileFate, Manifest, StageRecord, TableRecord};
use crate::plan::Plan;
use crate::publish::{self, Provenance, RunLock};
use crate::source::{self, ResolvedSource};
use crate::stages::{FileRead, Inputs, StageCtx};

/// What the person asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub data_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    /// Date of the run; later dates in the data are implausible. Defaults to today.
    pub run_date: Option<NaiveDate>,
    pub threads: usize,
}

/// A finished, published run.
#[derive(Debug)]
pub struct RunReport {
    pub run_dir: PathBuf,
    pub manifest: Manifest,
}

/// One stage's result in this run.
struct Done {
    table: DataFrame,
    rejects: Option<DataFrame>,
    dropped: Option<DataFrame>,
    files: Vec<FileRead>,
    fingerprint: String,
    rows_in: u64,
    seconds: f64,
}

fn new_run_id() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}-{:05}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id() % 100_000
    )
}

/// Runs the whole plan and publishes it.
pub fn run(plan: &Plan, opts: &RunOptions, log: &Log) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let started_utc = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let data_dir = plan.data_dir(opts.data_dir.as_ref());
    let out_dir = plan.out_dir(opts.out_dir.as_ref());
    let run_date = opts
        .run_date
        .unwrap_or_else(|| chrono::Local::now().date_naive());
    let lock = RunLock::acquire(&out_dir)?;
    if let Some(stale) = &lock.stale {
        log.warn(&format!(
            "a previous run did not finish ({stale}); its partial output is discarded"
        ));
    }
    publish::sweep_unfinished(&out_dir);

    let sources = resolve_sources(plan, &data_dir)?;
    let run_id = new_run_id();
    let runs = out_dir.join("runs");
    let partial = runs.join(format!("{run_id}.partial"));
    std::fs::create_dir_all(&partial).map_err(|e| RunError::io(&partial, e))?;
    log.info(&format!(
        "run {run_id}: {} stages, {} sources, data {}",
        plan.stages.len(),
        sources.len(),
        data_dir.display()
    ));

    let result = execute(plan, &sources, &data_dir, run_date, log);
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    let outcome = finish(
        plan,
        &done,
        &partial,
        &run_id,
        run_date,
        &started_utc,
        started,
        opts,
        log,
    );
    match outcome {
        Ok(manifest) => {
            publish::failpoint("publish")?;
            let final_dir = runs.join(&run_id);
            std::fs::rename(&partial, &final_dir).map_err(|e| RunError::io(&final_dir, e))?;
            publish::switch_current(&out_dir, &run_id)?;
            drop(lock);
            Ok(RunReport {
                run_dir: final_dir,
                manifest,
            })
        }
        Err(e) => {
            let failed = runs.join(format!("{run_id}.failed"));
            if std::fs::rename(&partial, &failed).is_ok() && e.is::<DataError>() {
                log.warn(&format!(
                    "nothing was published; the failed run's rejects are in {}",
                    failed.display()
                ));
            }
            Err(e)
        }
    }
}

fn resolve_sources(plan: &Plan, data_dir: &std::path::Path) -> anyhow::Result<Vec<ResolvedSource>> {
    let used: Vec<&str> = plan
        .stages
        .iter()
        .filter_map(|s| s.kind.stage().reads_source())
        .collect();
    let mut out = Vec::new();
    for s in &plan.spec.sources {
        if used.contains(&s.value.name.as_str()) {
            out.push(source::resolve_source(&s.value, &plan.sites, data_dir)?);
        }
    }
    Ok(out)
}

fn fingerprint(plan: &Plan, id: usize, inputs: &[&str], files: &[FileRead]) -> String {
    let s = &plan.stages[id];
    let mut h = blake3::Hasher::new();
    h.update(crate::ENGINE_VERSION.as_bytes());
    h.update(s.kind_name.as_bytes());
    h.update(format!("{:?}", s.kind).as_bytes());
    for i in inputs {
        h.update(i.as_bytes());
    }
    if let Some(src) = s.kind.stage().reads_source() {
        // Hash what the YAML says, not compiled forms (no locations, no hash-map order).
        if let Some(spec) = plan.spec.sources.iter().find(|x| x.value.name == src) {
            let s = &spec.value;
            h.update(
                format!(
                    "{:?}{:?}{:?}{:?}{}",
                    s.name, s.files, s.sites, s.export_date, s.reject_limit
                )
                .as_bytes(),
            );
            for c in &s.columns {
                h.update(format!("{:?}", c.value).as_bytes());
            }
        }
        for site in &plan.spec.sites {
            h.update(format!("{:?}", site.value).as_bytes());
        }
        h.update(format!("{:?}", plan.spec.header.dates).as_bytes());
    }
    for f in files {
        h.update(f.file.as_bytes());
        h.update(f.hash.as_bytes());
    }
    for r in s.kind.stage().reference_files(&plan.spec.base_dir()) {
        match std::fs::read(&r) {
            Ok(bytes) => h.update(blake3::hash(&bytes).as_bytes()),
            Err(_) => h.update(b"missing"),
        };
    }
    h.finalize().to_hex().to_string()
}

fn execute(
    plan: &Plan,
    sources: &[ResolvedSource],
    data_dir: &std::path::Path,
    run_date: NaiveDate,
    log: &Log,
) -> anyhow::Result<Vec<Done>> {
    let n = plan.stages.len();
    let slots: Vec<Mutex<Option<Done>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let bar = log.progress(n as u64);
    let base_dir = plan.spec.base_dir();
    for wave in &plan.waves {
        wave.par_iter()
            .map(|&id| -> anyhow::Result<()> {
                let s = &plan.stages[id];
                publish::failpoint(&format!("stage:{}", s.name))?;
                let t0 = Instant::now();
                let mut tables = Vec::new();
                let mut input_fps = Vec::new();
                for (&j, name) in s.input_ids.iter().zip(&s.inputs) {
                    let slot = slots[j]
                        .lock()
                        .map_err(|_| RunError::Internal("poisoned stage slot".into()))?;
                    let d = slot.as_ref().ok_or_else(|| {
                        RunError::Internal(format!("input `{name}` of `{}` did not run", s.name))
                    })?;
                    tables.push((name.clone(), d.table.clone()));
                    input_fps.push(d.fingerprint.clone());
                }
                let rows_in = tables.iter().map(|(_, t)| t.height() as u64).sum();
                let ctx = StageCtx {
                    name: &s.name,
                    spec: &plan.spec,
                    run_date,
                    data_dir,
                    base_dir: &base_dir,
                    sources,
                };
                let out = s
                    .kind
                    .stage()
                    .run(&ctx, &Inputs { tables })
                    .map_err(|e| stage_error(&s.name, &s.kind_name, e))?;
                let table = out
                    .table
                    .collect()
                    .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
                let fp_inputs: Vec<&str> = input_fps.iter().map(String::as_str).collect();
                let fingerprint = fingerprint(plan, id, &fp_inputs, &out.files);
                let seconds = t0.elapsed().as_secs_f64();
                let line = format!(
                    "stage {} ({}): {} rows{} in {:.2}s",
                    s.name,
                    s.kind_name,
                    table.height(),
                    out.rejects
                        .as_ref()
                        .filter(|r| r.height() > 0)
                        .map(|r| format!(", {} rejected", r.height()))
                        .unwrap_or_default(),
                    seconds
                );
                if log.plain_steps() {
                    log.info(&line);
                } else {
                    bar.set_message(s.name.clone());
                    bar.inc(1);
                }
                let done = Done {
                    table,
                    rejects: out.rejects,
                    dropped: out.dropped,
                    files: out.files,
                    fingerprint,
                    rows_in,
                    seconds,
                };
                *slots[id]
                    .lock()
                    .map_err(|_| RunError::Internal("poisoned stage slot".into()))? = Some(done);
                Ok(())
            })
            .collect::<anyhow::Result<Vec<()>>>()?;
    }
    bar.finish_and_clear();
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .map_err(|_| RunError::Internal("poisoned stage slot".into()).into())
                .and_then(|d| {
                    d.ok_or_else(|| RunError::Internal("a stage did not run".into()).into())
                })
        })
        .collect()
}

fn stage_error(name: &str, kind: &str, e: anyhow::Error) -> anyhow::Error {
    if e.is::<DataError>() || e.is::<RunError>() {
        return e.context(format!("stage `{name}` ({kind}) failed"));
    }
    DataError::Stage {
        stage: name.to_string(),
        message: format!("{e:#}"),
    }
    .into()
}

/// Rows per SRCFILE in `df` (optionally only where `filter` holds).
fn counts_by_file(df: &DataFrame, filter: Option<Expr>) -> anyhow::Result<HashMap<String, u64>> {
    if df.height() == 0 {
        return Ok(HashMap::new());
    }
    let mut lf = df.clone().lazy();
    if let Some(f) = filter {
        lf = lf.filter(f);
    }
    let counts = lf
        .group_by([col("SRCFILE")])
        .agg([len().alias("n")])
        .collect()?;
    let files = counts.column("SRCFILE")?.str()?.clone();
    let ns = counts.column("n")?.cast(&DataType::UInt64)?;
    let ns = ns.u64()?;
    Ok(files
        .iter()
        .zip(ns.iter())
        .filter_map(|(f, n)| Some((f?.to_string(), n?)))
        .collect())
}

/// Row fate of every input file, following each ingest through its row-level stages.
fn row_fate(plan: &Plan, done: &[Done]) -> anyhow::Result<Vec<FileFate>> {
    let mut out = Vec::new();
    let lineage_child = |i: usize| -> Vec<usize> {
        plan.consumers(i)
            .into_iter()
            .filter(|&j| {
                plan.stages[j].kind.stage().row_level()
                    && plan.stages[j].input_ids.first() == Some(&i)
            })
            .collect()
    };
    for (id, s) in plan.stages.iter().enumerate() {
        let Some(source) = s.kind.stage().reads_source() else {
            continue;
        };
        // Walk to every terminal of the row-level chain, keeping the path.
        let mut stack = vec![vec![id]];
        while let Some(path) = stack.pop() {
            let last = *path.last().unwrap_or(&id);
            let children = lineage_child(last);
            if !children.is_empty() {
                for c in children {
                    let mut p = path.clone();
                    p.push(c);
                    stack.push(p);
                }
                continue;
            }
            let terminal = &done[last].table;
            if terminal.height() > 0 && terminal.column("SRCFILE").is_err() {
                anyhow::bail!(
                    "stage `{}` is row-level but its table has no SRCFILE column",
                    plan.stages[last].name
                );
            }
            let accepted = counts_by_file(terminal, None)?;
            let mut rejected: HashMap<String, u64> = HashMap::new();
            let mut collapsed: HashMap<String, u64> = HashMap::new();
            let mut superseded: HashMap<String, u64> = HashMap::new();
            for &p in &path {
                if let Some(r) = &done[p].rejects {
                    for (f, n) in counts_by_file(r, None)? {
                        *rejected.entry(f).or_default() += n;
                    }
                }
                if let Some(d) = &done[p].dropped {
                    for (f, n) in counts_by_file(d, Some(col("FATE").eq(lit("collapsed"))))? {
                        *collapsed.entry(f).or_default() += n;
                    }
                    for (f, n) in counts_by_file(d, Some(col("FATE").eq(lit("superseded"))))? {
                        *superseded.entry(f).or_default() += n;
                    }
                }
            }
            for f in &done[id].files {
                let get = |m: &HashMap<String, u64>| m.get(&f.file).copied().unwrap_or(0);
                out.push(FileFate {
                    source: source.to_string(),
                    file: f.file.clone(),
                    table: plan.stages[last].name.clone(),
                    read: f.rows,
                    accepted: get(&accepted),
                    rejected: get(&rejected),
                    collapsed: get(&collapsed),
                    superseded: get(&superseded),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.source, &a.file, &a.table).cmp(&(&b.source, &b.file, &b.table)));
    Ok(out)
}

/// Every stage's rejects in one table, with STAGE and SOURCE.
fn all_rejects(plan: &Plan, done: &[Done]) -> anyhow::Result<DataFrame> {
    let mut parts = Vec::new();
    let mut file_source: BTreeMap<String, String> = BTreeMap::new();
    for d in done {
        for f in &d.files {
            file_source.insert(f.file.clone(), f.source.clone());
        }
    }
    for (id, d) in done.iter().enumerate() {
        if let Some(r) = &d.rejects {
            if r.height() > 0 {
                parts.push(
                    r.clone()
                        .lazy()
                        .with_column(lit(plan.stages[id].name.clone()).alias("STAGE")),
                );
            }
        }
    }
    let mut table = if parts.is_empty() {
        crate::rejects::empty()?
            .lazy()
            .with_column(lit("").alias("STAGE"))
            .limit(0)
    } else {
        concat(parts, UnionArgs::default())?
    };
    let map = df!(
        "SRCFILE" => file_source.keys().cloned().collect::<Vec<_>>(),
        "SOURCE" => file_source.values().cloned().collect::<Vec<_>>(),
    )?;
    table = table.join(
        map.lazy(),
        [col("SRCFILE")],
        [col("SRCFILE")],
        JoinArgs::new(JoinType::Left),
    );
    Ok(table
        .select([
            col("SOURCE"),
            col("SRCFILE"),
            col("SRCLINE"),
            col("SITE"),
            col("STAGE"),
            col("COLUMN"),
            col("RAWVALUE"),
            col("RULE"),
            col("REASON"),
        ])
        .sort_by_exprs(
            [col("SRCFILE"), col("SRCLINE"), col("STAGE")],
            SortMultipleOptions::default(),
        )
        .collect()?)
}

fn all_dropped(done: &[Done]) -> anyhow::Result<DataFrame> {
    let parts: Vec<LazyFrame> = done
        .iter()
        .filter_map(|d| d.dropped.as_ref())
        .filter(|d| d.height() > 0)
        .map(|d| d.clone().lazy())
        .collect();
    if parts.is_empty() {
        return Ok(df!(
            "SRCFILE" => Vec::<String>::new(),
            "SRCLINE" => Vec::<i64>::new(),
            "SITE" => Vec::<String>::new(),
            "FATE" => Vec::<String>::new(),
            "KEPTFILE" => Vec::<String>::new(),
            "KEPTLINE" => Vec::<i64>::new(),
        )?);
    }
    Ok(concat(parts, UnionArgs::default())?
        .sort_by_exprs(
            [col("SRCFILE"), col("SRCLINE")],
            SortMultipleOptions::default(),
        )
        .collect()?)
}

fn check_reject_limits(plan: &Plan, fates: &[FileFate], rejects: &DataFrame) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for f in fates {
        let Some(src) = plan.spec.sources.iter().find(|s| s.value.name == f.source) else {
            continue;
        };
        let limit = src.value.reject_limit;
        if f.read == 0 {
            continue;
        }
        let frac = f.rejected as f64 / f.read as f64;
        if frac <= limit {
            continue;
        }
        let mine = rejects
            .clone()
            .lazy()
            .filter(col("SRCFILE").eq(lit(f.file.clone())));
        let top = mine
            .clone()
            .group_by([col("RULE")])
            .agg([len().alias("n")])
            .sort_by_exprs(
                [col("n"), col("RULE")],
                SortMultipleOptions::default().with_order_descending_multi([true, false]),
            )
            .limit(3)
            .collect()?;
        let rules = top.column("RULE")?.str()?.clone();
        let ns = top.column("n")?.cast(&DataType::UInt64)?;
        let reasons: Vec<String> = rules
            .iter()
            .zip(ns.u64()?.iter())
            .map(|(r, n)| format!("{} ({})", r.unwrap_or("?"), n.unwrap_or(0)))
            .collect();
        let ex = mine.limit(3).collect()?;
        let mut examples = Vec::new();
        for i in 0..ex.height() {
            let get = |c: &str| {
                ex.column(c)
                    .ok()
                    .and_then(|c| c.get(i).ok())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            let mut reason = get("REASON").trim_matches('"').to_string();
            // Stages may quote the raw value in REASON; a value of an identifying column
            // (or of a key holding one) stays out of the message.
            let raw = get("RAWVALUE").trim_matches('"').to_string();
            let identifying = get("COLUMN")
                .trim_matches('"')
                .split('+')
                .any(|c| plan.spec.header.identifying.iter().any(|i| i == c));
            if identifying && !raw.is_empty() {
                reason = reason.replace(&raw, "<withheld>");
            }
            examples.push(format!("line {}: {reason}", get("SRCLINE")));
        }
        failures.push(format!(
            "{}: {} of {} rows rejected ({:.1}%), above the limit of {:.1}% for source `{}`\n  top reasons: {}\n  examples:\n    {}",
            f.file,
            f.rejected,
            f.read,
            100.0 * frac,
            100.0 * limit,
            f.source,
            reasons.join(", "),
            examples.join("\n    ")
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        failures.dedup();
        Err(DataError::RejectLimit(format!(
            "reject limit exceeded, nothing published:\n{}",
            failures.join("\n")
        ))
        .into())
    }
}

/// Sorts a published table by its keys (every column when none are given).
fn sorted(df: &DataFrame, keys: &[String]) -> anyhow::Result<DataFrame> {
    let by: Vec<Expr> = if keys.is_empty() {
        df.get_column_names()
            .iter()
            .map(|c| col(c.as_str()))
            .collect()
    } else {
        keys.iter().map(|k| col(k.as_str())).collect()
    };
    if by.is_empty() {
        return Ok(df.clone());
    }
    Ok(df
        .clone()
        .lazy()
        .sort_by_exprs(by, SortMultipleOptions::default().with_maintain_order(true))
        .collect()?)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    plan: &Plan,
    done: &[Done],
    run_dir: &std::path::Path,
    run_id: &str,
    run_date: NaiveDate,
    started_utc: &str,
    started: Instant,
    opts: &RunOptions,
    log: &Log,
) -> anyhow::Result<Manifest> {
    let fates = row_fate(plan, done)?;
    let broken: Vec<String> = fates
        .iter()
        .filter(|f| !f.reconciles())
        .map(|f| {
            format!(
                "{} -> {}: read {} != accepted {} + rejected {} + collapsed {} + superseded {}",
                f.file, f.table, f.read, f.accepted, f.rejected, f.collapsed, f.superseded
            )
        })
        .collect();
    if !broken.is_empty() {
        return Err(DataError::Reconciliation(broken.join("; ")).into());
    }
    let rejects = all_rejects(plan, done)?;
    let dropped = all_dropped(done)?;
    let limits = check_reject_limits(plan, &fates, &rejects);
    let prov = |table: &str, fp: &str| Provenance {
        pipeline: plan.spec.header.pipeline.clone(),
        pipeline_hash: plan.pipeline_hash.clone(),
        table: table.to_string(),
        stage_fingerprint: fp.to_string(),
        engine_version: crate::ENGINE_VERSION.to_string(),
    };
    let all_fp = {
        let mut h = blake3::Hasher::new();
        for d in done {
            h.update(d.fingerprint.as_bytes());
        }
        h.finalize().to_hex().to_string()
    };
    if let Err(e) = limits {
        let mut r = rejects.clone();
        let _ = publish::write_parquet(
            &mut r,
            &run_dir.join("rejects.parquet"),
            &prov("rejects", &all_fp),
        );
        return Err(e);
    }

    // Tables to write: published stages, then the engine's own tables.
    let mut jobs: Vec<(String, DataFrame, String)> = Vec::new();
    for (id, s) in plan.stages.iter().enumerate() {
        if s.publish {
            jobs.push((
                s.name.clone(),
                sorted(&done[id].table, &s.sort_by)?,
                done[id].fingerprint.clone(),
            ));
        }
    }
    jobs.push(("rejects".into(), rejects, all_fp.clone()));
    jobs.push(("duplicates".into(), dropped, all_fp.clone()));
    jobs.push(("row_fate".into(), fate_table(&fates)?, all_fp.clone()));
    let tables: Vec<TableRecord> = jobs
        .into_par_iter()
        .map(|(name, mut df, fp)| -> anyhow::Result<TableRecord> {
            publish::failpoint(&format!("write:{name}"))?;
            let file = format!("{name}.parquet");
            let (bytes, hash) =
                publish::write_parquet(&mut df, &run_dir.join(&file), &prov(&name, &fp))?;
            Ok(TableRecord {
                name,
                file,
                rows: df.height() as u64,
                bytes,
                blake3: hash,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let stages = plan
        .stages
        .iter()
        .zip(done)
        .map(|(s, d)| StageRecord {
            name: s.name.clone(),
            kind: s.kind_name.clone(),
            inputs: s.inputs.clone(),
            fingerprint: d.fingerprint.clone(),
            status: "ran".into(),
            rows_in: d.rows_in + d.files.iter().map(|f| f.rows).sum::<u64>(),
            rows_out: d.table.height() as u64,
            rejected: d.rejects.as_ref().map(|r| r.height() as u64).unwrap_or(0),
            set_aside: d.dropped.as_ref().map(|r| r.height() as u64).unwrap_or(0),
            seconds: d.seconds,
        })
        .collect();
    let manifest = Manifest {
        run_id: run_id.to_string(),
        pipeline: plan.spec.header.pipeline.clone(),
        pipeline_file: plan.spec.path.display().to_string(),
        pipeline_hash: plan.pipeline_hash.clone(),
        engine_version: crate::ENGINE_VERSION.to_string(),
        run_date: run_date.to_string(),
        started_utc: started_utc.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        threads: opts.threads,
        inputs: done.iter().flat_map(|d| d.files.iter().cloned()).collect(),
        stages,
        tables,
        row_fate: fates,
    };
    publish::failpoint("manifest")?;
    let json = serde_json::to_vec_pretty(&manifest).context("serialising the manifest")?;
    publish::write_atomic(&run_dir.join("manifest.json"), &json)?;
    let total_rejected: u64 = manifest.row_fate.iter().map(|f| f.rejected).sum();
    log.info(&format!(
        "run {run_id}: {} tables written, {} rows rejected, {:.2}s",
        manifest.tables.len(),
        total_rejected,
        manifest.seconds
    ));
    Ok(manifest)
}

fn fate_table(fates: &[FileFate]) -> anyhow::Result<DataFrame> {
    Ok(df!(
        "SOURCE" => fates.iter().map(|f| f.source.clone()).collect::<Vec<_>>(),
        "SRCFILE" => fates.iter().map(|f| f.file.clone()).collect::<Vec<_>>(),
        "TABLE" => fates.iter().map(|f| f.table.clone()).collect::<Vec<_>>(),
        "READ" => fates.iter().map(|f| f.read).collect::<Vec<_>>(),
        "ACCEPTED" => fates.iter().map(|f| f.accepted).collect::<Vec<_>>(),
        "REJECTED" => fates.iter().map(|f| f.rejected).collect::<Vec<_>>(),
        "COLLAPSED" => fates.iter().map(|f| f.collapsed).collect::<Vec<_>>(),
        "SUPERSEDED" => fates.iter().map(|f| f.superseded).collect::<Vec<_>>(),
    )?)
}
