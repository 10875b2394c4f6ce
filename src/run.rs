//! A run from start to end: lock, resolve sources, execute the stages (see `execute`), then
//! reconcile row fate, check reject limits, and publish atomically with the manifest.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use polars::prelude::*;

use crate::cache::{self, Cache, StageSummary};
use crate::error::{DataError, RunError};
use crate::execute::{Engine, Slot, concurrently, poisoned};
use crate::file_hashes::FileHashes;
use crate::log::Log;
use crate::manifest::{Manifest, ReuseSummary, StageRecord, TableRecord};
use crate::plan::Plan;
use crate::publish::{self, Provenance, RunLock};
use crate::reuse::{Judge, Selection};
use crate::row_fate;
use crate::source::{self, ResolvedSource};
use crate::stages::FileRead;
use crate::stages::ingest;

/// What the person asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub data_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    /// Date of the run; later dates in the data are implausible. Defaults to today.
    pub run_date: Option<NaiveDate>,
    pub threads: usize,
    /// Run every stage and parse every file, whatever the cache holds.
    pub force: bool,
    /// `--select`: stages that run whatever the cache holds (see [`Selection`]).
    pub select: Vec<String>,
    /// `--batch-subjects N`: the stages after the ingests run on about N subjects at a time
    /// (docs/subject-batches.md); `None`: on the whole tables.
    pub batch_subjects: Option<usize>,
}

impl RunOptions {
    /// The run date: `--run-date`, else today.
    pub fn run_date(&self) -> NaiveDate {
        self.run_date
            .unwrap_or_else(|| chrono::Local::now().date_naive())
    }
}

/// A finished, published run.
#[derive(Debug)]
pub struct RunReport {
    pub run_dir: PathBuf,
    pub manifest: Manifest,
}

fn new_run_id() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}-{:05}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id() % 100_000
    )
}

/// The sources the plan's ingest stages read, resolved against `data_dir`.
pub fn resolve_sources(plan: &Plan, data_dir: &Path) -> anyhow::Result<Vec<ResolvedSource>> {
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

/// The manifest of the run `current` points at, if it can be read.
pub fn previous_manifest(out_dir: &Path) -> Option<(PathBuf, Manifest)> {
    let dir = publish::current_run(out_dir)?;
    let m = Manifest::read(&dir).ok()?;
    Some((dir, m))
}

/// Runs the whole plan and publishes it.
pub fn run(plan: &Plan, opts: &RunOptions, log: &Log) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let started_utc = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let data_dir = plan.data_dir(opts.data_dir.as_ref());
    let out_dir = plan.out_dir(opts.out_dir.as_ref());
    let run_date = opts.run_date();
    let selection = Selection::new(plan, &opts.select, opts.force)?;
    let lock = RunLock::acquire(&out_dir)?;
    if let Some(stale) = &lock.stale {
        log.warn(&format!(
            "a previous run did not finish ({stale}); its partial output is discarded"
        ));
    }
    publish::sweep_unfinished(&out_dir);

    let sources = resolve_sources(plan, &data_dir)?;
    let previous = previous_manifest(&out_dir);
    let cache = Cache::new(&out_dir);
    let hashes = FileHashes::load(cache.dir(), !opts.force);
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

    let base_dir = plan.spec.base_dir();
    let engine = Engine {
        plan,
        judge: Judge {
            plan,
            cache: &cache,
            hashes: &hashes,
            previous: previous.as_ref().map(|(_, m)| m),
            run_date: run_date.to_string(),
            bound: ingest::date_window(&plan.spec, run_date).1.to_string(),
            selection: &selection,
            parameter_values: Default::default(),
            engine_build: Default::default(),
        },
        cache: &cache,
        sources: &sources,
        data_dir: &data_dir,
        base_dir: &base_dir,
        run_date,
        log,
        slots: (0..plan.stages.len()).map(|_| OnceLock::new()).collect(),
        workers: opts.threads.max(1),
        run_dir: &partial,
        previous: previous.as_ref(),
        published: (0..plan.stages.len()).map(|_| OnceLock::new()).collect(),
        lean_ingests: Default::default(),
    };
    let executed = match opts.batch_subjects {
        Some(size) => match engine.execute_batched(size) {
            Ok(true) => Ok(()),
            Ok(false) => engine.execute(),
            Err(e) => Err(e),
        },
        None => engine.execute(),
    };
    if let Err(e) = executed {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    // The stages have run: the pages the allocator keeps for reuse are given back on a
    // thread of their own while the run's own tables are written and the run published,
    // rather than by the kernel after the process ends, on one core (0.3-0.4 s after a
    // whole run of the bench cohort, whose stages touched 3.4 GB; 0.1 s now). Not waited
    // for: what is left when the process ends, the kernel takes back as before.
    let _detached = std::thread::Builder::new()
        .name("give-back".into())
        .spawn(crate::memory::give_back);
    let outcome = finish(
        &engine,
        &partial,
        &run_id,
        &started_utc,
        started,
        opts,
        previous.as_ref(),
    );
    // What this run computed is cached even when it fails on the data (a fixed file then
    // re-parses alone): stages cache their outputs as they run.
    match outcome {
        Ok(manifest) => {
            publish::failpoint("publish")?;
            let final_dir = runs.join(&run_id);
            std::fs::rename(&partial, &final_dir).map_err(|e| RunError::io(&final_dir, e))?;
            publish::switch_current(&out_dir, &run_id)?;
            // The cache is best effort: failing to tidy it never fails a published run.
            if let Err(e) = hashes.save() {
                log.warn(&format!("could not save file hashes: {e}"));
            }
            prune_cache(&cache, &manifest, previous.as_ref().map(|(_, m)| m));
            drop(lock);
            Ok(RunReport {
                run_dir: final_dir,
                manifest,
            })
        }
        Err(e) => {
            let failed = runs.join(format!("{run_id}.failed"));
            publish::remove_temporaries(&partial);
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

/// Keeps the entries of this run and of the run before it (so an amendment can be undone
/// cheaply); removes the rest.
fn prune_cache(cache: &Cache, now: &Manifest, before: Option<&Manifest>) {
    let mut stages = HashSet::new();
    let mut files = HashSet::new();
    for m in std::iter::once(now).chain(before) {
        for s in &m.stages {
            stages.insert(s.key().to_string());
            if let Some(src) = s.recipe.as_ref().and_then(|r| r.source.as_ref()) {
                for f in &src.files {
                    files.insert(src.file_key(&f.site, &f.file, &f.hash, f.run_date.as_deref()));
                }
            }
        }
    }
    cache.prune(&stages, &files);
}

/// Sorts a published table by its keys (every column when none are given). A table already
/// in that order, as most daily tables come from their stages, is returned as it is.
pub(crate) fn sorted(df: &DataFrame, keys: &[String]) -> anyhow::Result<DataFrame> {
    let keys: Vec<String> = if keys.is_empty() {
        df.get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        keys.to_vec()
    };
    if keys.is_empty() || already_sorted(df, &keys)? {
        return Ok(df.clone());
    }
    // Keys of text, integers and dates: one sort of packed integers and one gather. polars'
    // sort encodes every key of every row as bytes and compares those.
    if let Some(order) = crate::stages::packed::packed_order(df, &keys)? {
        return Ok(crate::stages::gather_rows(df, &order)?);
    }
    let by: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();
    Ok(df
        .clone()
        .lazy()
        .sort_by_exprs(by, SortMultipleOptions::default().with_maintain_order(true))
        .collect()?)
}

/// True when every row's keys are at most the next row's (lexicographically), so a stable
/// sort would keep the order. Only for keys without nulls of types whose comparison is the
/// sort's order (text, integers, dates, booleans); anything else says false and is sorted.
pub(crate) fn already_sorted(df: &DataFrame, keys: &[String]) -> anyhow::Result<bool> {
    if df.height() < 2 {
        return Ok(true);
    }
    for k in keys {
        let c = df.column(k)?;
        if !crate::stages::exact_key(c.dtype()) || c.null_count() > 0 {
            return Ok(false);
        }
    }
    // Each row's keys against the row before's, key by key until one differs. A text key
    // is compared by its view first (a subject's rows share one), its bytes only where the
    // views differ; polars' comparisons read the bytes of every longer text, row by row, for
    // each of `<` and `==`.
    enum Key<'a> {
        Text(polars_arrow::array::Utf8ViewArray),
        Small(&'a [i32]),
        Wide(&'a [i64]),
        Unsigned(&'a [u64]),
    }
    // Each key in one piece, in its physical type (a date's days, a time's units); narrow
    // integers and booleans widened.
    let physical = keys
        .iter()
        .map(|k| {
            let c = df.column(k)?.as_materialized_series().rechunk();
            let p = c.to_physical_repr().into_owned();
            Ok(match p.dtype() {
                DataType::String | DataType::Int32 | DataType::Int64 | DataType::UInt64 => p,
                _ => p.cast(&DataType::Int64)?,
            })
        })
        .collect::<anyhow::Result<Vec<Series>>>()?;
    let mut columns = Vec::with_capacity(keys.len());
    for p in &physical {
        columns.push(match p.dtype() {
            DataType::String => Key::Text(
                (p.str()?.downcast_iter().next().cloned())
                    .ok_or_else(|| anyhow::anyhow!("a key has no values"))?,
            ),
            DataType::Int32 => Key::Small(p.i32()?.cont_slice()?),
            DataType::UInt64 => Key::Unsigned(p.u64()?.cont_slice()?),
            _ => Key::Wide(p.i64()?.cont_slice()?),
        });
    }
    use std::cmp::Ordering;
    // Keeps the rows of `tied` whose key equals the row before's (`cmp(i)`: how row `i - 1`
    // compares with row `i`); false when one is after it.
    fn sift(tied: &mut Vec<usize>, cmp: impl Fn(usize) -> Ordering) -> bool {
        let mut kept = 0;
        for j in 0..tied.len() {
            let i = tied[j];
            match cmp(i) {
                Ordering::Less => {}
                Ordering::Equal => {
                    tied[kept] = i;
                    kept += 1;
                }
                Ordering::Greater => return false,
            }
        }
        tied.truncate(kept);
        true
    }
    // A block of rows at a time, a key at a time: the rows whose keys so far equal the row
    // before's (`tied`) are compared by the next key; one out of order ends the check. The
    // blocks are checked on every core (a table sorted at the end of a stage is often checked
    // while nothing else runs).
    use rayon::prelude::*;
    const BLOCK: usize = 4096;
    let in_order = (1..df.height())
        .into_par_iter()
        .step_by(BLOCK)
        .all(|start| {
            let mut tied: Vec<usize> = Vec::with_capacity(BLOCK);
            tied.extend(start..(start + BLOCK).min(df.height()));
            for key in &columns {
                let in_order = match key {
                    Key::Text(t) => {
                        let views = t.views().as_slice();
                        sift(&mut tied, |i| {
                            if views[i - 1].as_u128() == views[i].as_u128() {
                                return Ordering::Equal;
                            }
                            // SAFETY: `i - 1` and `i` are rows of the table (below its height).
                            unsafe {
                                t.value_unchecked(i - 1)
                                    .as_bytes()
                                    .cmp(t.value_unchecked(i).as_bytes())
                            }
                        })
                    }
                    Key::Small(v) => sift(&mut tied, |i| v[i - 1].cmp(&v[i])),
                    Key::Wide(v) => sift(&mut tied, |i| v[i - 1].cmp(&v[i])),
                    Key::Unsigned(v) => sift(&mut tied, |i| v[i - 1].cmp(&v[i])),
                };
                if !in_order {
                    return false;
                }
                if tied.is_empty() {
                    break;
                }
            }
            true
        });
    Ok(in_order)
}

/// The content key of published table `name` ([`TableRecord::content_key`]): made by the stage
/// of fingerprint `fp`, sorted by `key` (`None`: in the engine's order), and, for a table
/// written in parts, their layout (`parts`: it changes the file's bytes, not its rows).
pub(crate) fn table_content_key(
    plan: &Plan,
    name: &str,
    key: Option<&[String]>,
    fp: &str,
    parts: Option<&str>,
) -> String {
    let sort = match key {
        Some(key) => key.join("\u{1f}"),
        None => "engine".to_string(),
    };
    let mut all = vec![
        name,
        fp,
        &plan.spec.header.pipeline,
        &plan.pipeline_hash,
        crate::ENGINE_VERSION,
        &sort,
    ];
    all.extend(parts);
    content_key(&all)
}

fn content_key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"studyflow-published-1");
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Links (or copies) the previous run's file into the new run folder when it is the same
/// table (same content key) and still whole.
fn link_previous(
    previous: Option<&(PathBuf, Manifest)>,
    key: &str,
    dest: &Path,
) -> Option<TableRecord> {
    let (dir, m) = previous?;
    let rec = m.tables.iter().find(|t| t.content_key == key)?;
    let src = dir.join(&rec.file);
    cache::parquet_looks_whole(&src, rec.bytes).ok()?;
    cache::link_or_copy(&src, dest).ok()?;
    Some(rec.clone())
}

/// The previous run's published file of stage `id`'s table, when its cache entry links that
/// very file (same blake3) and it was published in the stage's present `sort_by` order.
fn same_published_table(
    e: &Engine,
    previous: Option<&(PathBuf, Manifest)>,
    id: usize,
) -> Option<(PathBuf, String)> {
    let (dir, m) = previous?;
    let s = &e.plan.stages[id];
    let part = e.slots.get(id)?.get()?.entry.as_ref()?.table_part()?;
    if !part.is_parquet() {
        return None;
    }
    let rec = m.tables.iter().find(|t| t.name == s.name)?;
    (rec.blake3 == part.blake3 && rec.key == s.sort_by)
        .then(|| (dir.join(&rec.file), rec.blake3.clone()))
}

/// What the footer of published table `table` (of stage fingerprint `fp`) says of it.
pub(crate) fn provenance(plan: &Plan, table: &str, fp: &str) -> Provenance {
    Provenance {
        pipeline: plan.spec.header.pipeline.clone(),
        pipeline_hash: plan.pipeline_hash.clone(),
        table: table.to_string(),
        stage_fingerprint: fp.to_string(),
        engine_version: crate::ENGINE_VERSION.to_string(),
        identifying: plan.spec.header.identifying.clone(),
    }
}

/// Publishes table `name` into the run folder: linked from the previous run when its content
/// key is unchanged; else, when `same_table` names a published file of this very table (same
/// rows, same order), copied from it with a new footer; else made by `make` and written. A
/// stage's table (`engine` false) is published as soon as the stage has run; the engine's own
/// tables at the end of the run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish_table(
    plan: &Plan,
    run_dir: &Path,
    previous: Option<&(PathBuf, Manifest)>,
    name: &str,
    key: &[String],
    fp: &str,
    engine: bool,
    same_table: Option<(PathBuf, String)>,
    make: impl FnOnce(&Path, &publish::Provenance) -> anyhow::Result<(u64, String, u64)>,
) -> anyhow::Result<TableRecord> {
    publish::failpoint(&format!("write:{name}"))?;
    let file = format!("{name}.parquet");
    let dest = run_dir.join(&file);
    let ck = table_content_key(plan, name, if engine { None } else { Some(key) }, fp, None);
    if let Some(prev) = link_previous(previous, &ck, &dest) {
        return Ok(TableRecord {
            name: name.to_string(),
            file,
            key: key.to_vec(),
            content_key: ck,
            status: "linked".into(),
            ..prev
        });
    }
    let prov = provenance(plan, name, fp);
    if let Some((src, src_blake3)) = same_table
        && let Some((bytes, hash, rows)) =
            publish::restamp_parquet(&src, &src_blake3, &dest, &prov)?
    {
        return Ok(TableRecord {
            name: name.to_string(),
            file,
            rows,
            bytes,
            blake3: hash,
            key: key.to_vec(),
            content_key: ck,
            status: "restamped".into(),
        });
    }
    let (bytes, hash, rows) = make(&dest, &prov)?;
    Ok(TableRecord {
        name: name.to_string(),
        file,
        rows,
        bytes,
        blake3: hash,
        key: key.to_vec(),
        content_key: ck,
        status: "written".into(),
    })
}

/// Writes `table` whole to `dest`: its size, blake3 and rows.
pub(crate) fn write_whole(
    mut table: DataFrame,
    dest: &Path,
    prov: &publish::Provenance,
) -> anyhow::Result<(u64, String, u64)> {
    let (bytes, hash) = publish::write_parquet(&mut table, dest, prov)?;
    Ok((bytes, hash, table.height() as u64))
}

/// Reconciles row fate, checks reject limits, publishes the tables (linked from the previous
/// run when unchanged) and writes the manifest.
#[allow(clippy::too_many_arguments)]
fn finish(
    e: &Engine,
    run_dir: &Path,
    run_id: &str,
    started_utc: &str,
    started: Instant,
    opts: &RunOptions,
    previous: Option<&(PathBuf, Manifest)>,
) -> anyhow::Result<Manifest> {
    let plan = e.plan;
    let n = plan.stages.len();
    let slots: Vec<&Slot> = (0..n).map(|id| e.slot(id)).collect::<anyhow::Result<_>>()?;
    let summaries: Vec<&StageSummary> = slots.iter().map(|s| &s.summary).collect();
    let fates = row_fate::row_fate(plan, &summaries)?;
    row_fate::reconcile(&fates)?;
    let files: Vec<&FileRead> = summaries.iter().flat_map(|s| s.files.iter()).collect();
    let all_fp = {
        let mut h = blake3::Hasher::new();
        for s in &slots {
            h.update(s.fingerprint.as_bytes());
        }
        h.finalize().to_hex().to_string()
    };
    // One part (`rejects` or `dropped`) of every stage that has some rows of it.
    let parts_of = |role: &str, rows: fn(&StageSummary) -> u64| {
        (0..n)
            .map(|id| {
                if rows(&slots[id].summary) == 0 {
                    Ok(None)
                } else {
                    e.part(id, role)
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let rejects_of = || -> anyhow::Result<DataFrame> {
        let parts = parts_of("rejects", |s| s.rejected)?;
        row_fate::all_rejects(plan, &parts, &files)
    };
    let over = row_fate::over_limit(plan, &fates);
    if !over.is_empty() {
        let mut r = rejects_of()?;
        let _ = publish::write_parquet(
            &mut r,
            &run_dir.join("rejects.parquet"),
            &provenance(plan, "rejects", &all_fp),
        );
        return Err(row_fate::reject_limit_error(
            &over,
            &r,
            &plan.spec.header.identifying,
        )?);
    }

    // Published stages, then the engine's own tables; each linked from the previous run
    // when its content key is unchanged, else built and written.
    enum Job<'a> {
        Stage(usize),
        Rejects,
        Duplicates,
        RowFate(&'a [crate::manifest::FileFate]),
    }
    let mut jobs: Vec<(String, Vec<String>, String, Job)> = Vec::new();
    for (id, s) in plan.stages.iter().enumerate() {
        if s.publish {
            jobs.push((
                s.name.clone(),
                s.sort_by.clone(),
                slots[id].fingerprint.clone(),
                Job::Stage(id),
            ));
        }
    }
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    jobs.push((
        "rejects".into(),
        keys(&["SRCFILE", "SRCLINE", "STAGE"]),
        all_fp.clone(),
        Job::Rejects,
    ));
    jobs.push((
        "duplicates".into(),
        keys(&["SRCFILE", "SRCLINE"]),
        all_fp.clone(),
        Job::Duplicates,
    ));
    jobs.push((
        "row_fate".into(),
        keys(&["SOURCE", "SRCFILE", "TABLE"]),
        all_fp.clone(),
        Job::RowFate(&fates),
    ));
    let tables: Vec<TableRecord> = concurrently(
        &jobs,
        e.workers,
        |(name, key, fp, job)| -> anyhow::Result<TableRecord> {
            if let Job::Stage(id) = job
                && let Some(rec) = e.published(*id)
            {
                return Ok(rec.clone());
            }
            // A reused stage's table whose lineage changed: the previous run published this
            // very table (its cache entry links that file) in this order.
            let same_table = match *job {
                Job::Stage(id) => same_published_table(e, previous, id),
                _ => None,
            };
            publish_table(
                plan,
                run_dir,
                previous,
                name,
                key,
                fp,
                !matches!(job, Job::Stage(_)),
                same_table,
                |dest, prov| match *job {
                    Job::Stage(id) => write_whole(
                        sorted(&e.frames(id)?.table, &plan.stages[id].sort_by)?,
                        dest,
                        prov,
                    ),
                    Job::Rejects => write_whole(rejects_of()?, dest, prov),
                    Job::Duplicates => {
                        let parts = (0..n)
                            .filter(|&id| slots[id].summary.set_aside > 0)
                            .map(|id| e.part_rows(id, "dropped"))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        row_fate::write_dropped(parts.into_iter().flatten().collect(), dest, prov)
                    }
                    Job::RowFate(f) => write_whole(row_fate::fate_table(f)?, dest, prov),
                },
            )
        },
    )?;

    let mut reuse = ReuseSummary::default();
    let mut stages = Vec::with_capacity(n);
    for (s, slot) in plan.stages.iter().zip(&slots) {
        let st = slot.state.lock().map_err(|_| poisoned())?;
        if st.status == "ran" {
            reuse.stages_ran += 1;
        } else {
            reuse.stages_reused += 1;
        }
        if let Some((p, r)) = slot.files {
            let (p, r) = if st.status == "ran" {
                (p, r)
            } else {
                (0, p + r)
            };
            reuse.files_parsed += p;
            reuse.files_reused += r;
        }
        let rows_in = s
            .input_ids
            .iter()
            .map(|&j| slots[j].summary.rows)
            .sum::<u64>()
            + slot.summary.files.iter().map(|f| f.rows).sum::<u64>();
        stages.push(StageRecord {
            name: s.name.clone(),
            kind: s.kind_name.clone(),
            inputs: s.inputs.clone(),
            fingerprint: slot.fingerprint.clone(),
            cache_key: (slot.key != slot.fingerprint).then(|| slot.key.clone()),
            status: st.status.into(),
            reasons: st.reasons.clone(),
            sort_by: s.sort_by.clone(),
            rows_in,
            rows_out: slot.summary.rows,
            rejected: slot.summary.rejected,
            set_aside: slot.summary.set_aside,
            seconds: st.seconds,
            files_parsed: slot
                .files
                .map(|(p, _)| if st.status == "ran" { p } else { 0 }),
            files_reused: slot
                .files
                .map(|(p, r)| if st.status == "ran" { r } else { p + r }),
            recipe: Some(slot.recipe.clone()),
        });
    }
    for t in &tables {
        if t.status == "linked" {
            reuse.tables_linked += 1;
        } else {
            reuse.tables_written += 1;
        }
    }
    let (files_hashed, bytes_hashed) = e.judge.hashes.read();
    reuse.files_hashed = files_hashed;
    reuse.bytes_hashed = bytes_hashed;
    let manifest = Manifest {
        run_id: run_id.to_string(),
        pipeline: plan.spec.header.pipeline.clone(),
        pipeline_file: plan.spec.path.display().to_string(),
        pipeline_hash: plan.pipeline_hash.clone(),
        engine_version: crate::ENGINE_VERSION.to_string(),
        run_date: e.run_date.to_string(),
        started_utc: started_utc.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        threads: opts.threads,
        reuse,
        inputs: files.into_iter().cloned().collect(),
        stages,
        tables,
        row_fate: fates,
        documents: Vec::new(),
    };
    let schemas = manifest
        .tables
        .iter()
        .map(|t| {
            Ok((
                t.name.clone(),
                crate::dictionary::schema_of(&run_dir.join(&t.file))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::dictionary::write(run_dir, &crate::dictionary::build(plan, &schemas))?;
    let mut manifest = manifest;
    for file in ["dictionary.json", "dictionary.md"] {
        let (bytes, blake3) = publish::hash_file(&run_dir.join(file))?;
        manifest.documents.push(crate::manifest::DocumentRecord {
            file: file.to_string(),
            bytes,
            blake3,
        });
    }
    publish::failpoint("manifest")?;
    let json = serde_json::to_vec_pretty(&manifest).context("serialising the manifest")?;
    publish::write_atomic(&run_dir.join("manifest.json"), &json)?;
    let total_rejected: u64 = manifest.row_fate.iter().map(|f| f.rejected).sum();
    e.log.info(&format!(
        "run {run_id}: {} stages ran, {} reused; {} tables written, {} linked; {} rows rejected; {:.2}s",
        manifest.reuse.stages_ran,
        manifest.reuse.stages_reused,
        manifest.reuse.tables_written,
        manifest.reuse.tables_linked,
        total_rejected,
        manifest.seconds
    ));
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable_sort(df: &DataFrame, keys: &[&str]) -> DataFrame {
        df.clone()
            .lazy()
            .sort_by_exprs(
                keys.iter().map(|k| col(*k)).collect::<Vec<_>>(),
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .collect()
            .unwrap()
    }

    proptest::proptest! {
        /// Skipping the sort of a table already in order gives exactly what sorting gives
        /// (missing first, text in byte order, dates, tables in pieces), and the check says
        /// "in order" for every sorted table it can judge.
        #[test]
        fn sorted_equals_a_stable_sort(
            rows in proptest::collection::vec(
                (0u8..8, proptest::option::of(-2i64..3), 0i32..3, 0u8..2), 0..30),
            presort in proptest::bool::ANY,
        ) {
            // Short texts (held in their views) and long ones (compared by their bytes).
            let text = [
                Some("a"), Some("ab"), Some("b"), Some("B"), Some("é"), None,
                Some("site/diary_2019-03-30.csv"), Some("site/diary_2019-06-30.csv"),
            ];
            let df = df!(
                "s" => rows.iter().map(|r| text[r.0 as usize]).collect::<Vec<_>>(),
                "n" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                "d" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                "x" => rows.iter().map(|r| r.3 as i64).collect::<Vec<_>>(),
                "f" => rows.iter().map(|r| r.1.map(|v| v as f64 / 2.0)).collect::<Vec<_>>(),
                "u" => rows.iter().map(|r| u64::MAX - r.2 as u64).collect::<Vec<_>>(),
                "b" => rows.iter().map(|r| r.3 == 1).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_column(col("d").cast(DataType::Date).alias("day"))
            .collect()
            .unwrap();
            // In two chunks, as a table stacked from pieces.
            let half = df.height() as i64 / 2;
            let mut df2 = df.slice(0, half as usize);
            df2.vstack_mut(&df.slice(half, df.height() - half as usize)).unwrap();
            let df = df2;
            for keys in [
                vec!["s", "d"],
                vec!["d", "s", "x"],
                vec!["s", "n"],
                vec!["x"],
                vec!["day", "n", "s"],
                vec!["f", "s"],
                vec!["u", "b", "x"],
                vec!["b", "s", "d"],
            ] {
                let input = if presort { stable_sort(&df, &keys) } else { df.clone() };
                let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                let got = sorted(&input, &owned).unwrap();
                proptest::prop_assert!(got.equals_missing(&stable_sort(&input, &keys)));
                let judged = keys.iter().all(|k| {
                    let c = input.column(k).unwrap();
                    c.null_count() == 0 && !c.dtype().is_float()
                });
                if presort && judged {
                    proptest::prop_assert!(already_sorted(&input, &owned).unwrap());
                }
            }
        }
    }

    #[test]
    fn the_order_check_sees_rows_out_of_order_across_its_blocks() {
        // 10,000 rows sorted by (s, d), 100 rows a subject; then one pair swapped at each
        // place that matters: the first row of the second block of rows (row 4097, against
        // the block before's last row), and inside a block on the second key only.
        let n = 10_000usize;
        let s: Vec<String> = (0..n).map(|i| format!("subject-{:05}", i / 100)).collect();
        let d: Vec<i32> = (0..n).map(|i| (i % 100) as i32).collect();
        let table = |s: &[String], d: &[i32]| df!("s" => s, "d" => d).unwrap();
        let keys = ["s".to_string(), "d".to_string()];
        assert!(already_sorted(&table(&s, &d), &keys).unwrap());
        for at in [4097usize, 4096 + 4096 + 1, 5050, n - 1] {
            let mut d2 = d.clone();
            d2.swap(at - 1, at);
            let ok = d2[at - 1] <= d2[at] || s[at - 1] != s[at];
            assert_eq!(already_sorted(&table(&s, &d2), &keys).unwrap(), ok, "{at}");
        }
        // The first key alone out of order at a block's first row.
        let mut s2 = s.clone();
        s2.swap(4095, 4096 + 100);
        assert!(!already_sorted(&table(&s2, &d), &keys).unwrap());
    }

    #[test]
    fn content_keys_differ_when_any_part_does() {
        assert_eq!(content_key(&["a", "b"]), content_key(&["a", "b"]));
        assert_ne!(content_key(&["ab", ""]), content_key(&["a", "b"]));
    }
}
