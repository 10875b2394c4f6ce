//! Executing a plan: each stage, wave by wave, runs or is reused from the cache; then row fate
//! is reconciled, reject limits are checked, and the run is published atomically.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Context;
use chrono::NaiveDate;
use polars::prelude::*;
use rayon::prelude::*;

use crate::cache::{self, Cache, Frames, StageEntry, StageSummary};
use crate::error::{DataError, RunError};
use crate::file_hashes::FileHashes;
use crate::fingerprint::Recipe;
use crate::log::Log;
use crate::manifest::{Manifest, ReuseSummary, StageRecord, TableRecord};
use crate::plan::Plan;
use crate::publish::{self, Provenance, RunLock};
use crate::reuse::{Action, FileState, Judge, Selection};
use crate::row_fate;
use crate::source::{self, ResolvedSource};
use crate::stages::ingest::{self, FileParser, ParsedFile};
use crate::stages::{FileRead, Inputs, Kind, StageCtx};

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

/// A stage's outcome in this run; its frames are loaded from the cache only when needed.
struct Slot {
    fingerprint: String,
    recipe: Recipe,
    summary: StageSummary,
    /// Where its output is cached (`None` when the cache could not be written).
    entry: Option<StageEntry>,
    frames: Mutex<Option<Arc<Frames>>>,
    state: Mutex<SlotState>,
    /// Ingest: files parsed and files taken from the cache.
    files: Option<(u64, u64)>,
}

struct SlotState {
    status: &'static str,
    reasons: Vec<String>,
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
        },
        cache: &cache,
        sources: &sources,
        data_dir: &data_dir,
        base_dir: &base_dir,
        run_date,
        log,
        slots: (0..plan.stages.len()).map(|_| OnceLock::new()).collect(),
        workers: opts.threads.max(1),
        writer: cache::Writer::start(),
    };
    if let Err(e) = engine.execute() {
        engine.writer.finish();
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let outcome = engine.finish(
        &partial,
        &run_id,
        &started_utc,
        started,
        opts,
        previous.as_ref(),
    );
    // What this run computed is cached even when it fails on the data (a fixed file then
    // re-parses alone).
    engine.writer.finish();
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
            stages.insert(s.fingerprint.clone());
            if let Some(src) = s.recipe.as_ref().and_then(|r| r.source.as_ref()) {
                for f in &src.files {
                    files.insert(src.file_key(&f.site, &f.file, &f.hash, f.run_date.as_deref()));
                }
            }
        }
    }
    cache.prune(&stages, &files);
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

fn poisoned() -> anyhow::Error {
    RunError::Internal("poisoned stage slot".into()).into()
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
    std::fs::hard_link(&src, dest)
        .or_else(|_| std::fs::copy(&src, dest).map(|_| ()))
        .ok()?;
    Some(rec.clone())
}

struct Engine<'a> {
    plan: &'a Plan,
    judge: Judge<'a>,
    cache: &'a Cache,
    sources: &'a [ResolvedSource],
    data_dir: &'a Path,
    base_dir: &'a Path,
    run_date: NaiveDate,
    log: &'a Log,
    slots: Vec<OnceLock<Slot>>,
    /// Stages (and published tables) handled at once.
    workers: usize,
    writer: cache::Writer,
}

/// Runs `f` on every item with at most `workers` OS threads, results in item order.
/// Not rayon: a stage waits on a slot lock for its inputs, and a rayon worker waiting there
/// could have stolen that very task from the stage holding the lock.
fn concurrently<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<anyhow::Result<R>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    let failed = r.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        // Stop handing out work; items already started finish.
                        next.store(items.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for r in results {
        match r.into_inner().map_err(|_| poisoned())? {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

impl Engine<'_> {
    fn ctx(&self, id: usize) -> StageCtx<'_> {
        StageCtx {
            name: &self.plan.stages[id].name,
            spec: &self.plan.spec,
            run_date: self.run_date,
            data_dir: self.data_dir,
            base_dir: self.base_dir,
            sources: self.sources,
        }
    }

    fn slot(&self, id: usize) -> anyhow::Result<&Slot> {
        self.slots[id].get().ok_or_else(|| {
            RunError::Internal(format!("stage `{}` did not run", self.plan.stages[id].name)).into()
        })
    }

    fn execute(&self) -> anyhow::Result<()> {
        let bar = self.log.progress(self.plan.stages.len() as u64);
        for wave in &self.plan.waves {
            concurrently(wave, self.workers, |&id| -> anyhow::Result<()> {
                let s = &self.plan.stages[id];
                publish::failpoint(&format!("stage:{}", s.name))?;
                let slot = self.stage(id)?;
                let line = self.describe(id, &slot)?;
                if self.log.plain_steps() {
                    self.log.info(&line);
                } else {
                    bar.set_message(s.name.clone());
                    bar.inc(1);
                }
                self.slots[id]
                    .set(slot)
                    .map_err(|_| RunError::Internal(format!("stage `{}` ran twice", s.name)))?;
                Ok(())
            })?;
        }
        bar.finish_and_clear();
        Ok(())
    }

    fn describe(&self, id: usize, slot: &Slot) -> anyhow::Result<String> {
        let s = &self.plan.stages[id];
        let st = slot.state.lock().map_err(|_| poisoned())?;
        let rejected = if slot.summary.rejected > 0 {
            format!(", {} rejected", slot.summary.rejected)
        } else {
            String::new()
        };
        let files = match slot.files {
            Some((parsed, reused)) if st.status == "ran" => {
                format!("; {parsed} of {} files parsed", parsed + reused)
            }
            _ => String::new(),
        };
        Ok(format!(
            "stage {} ({}): {} {} rows{rejected} in {:.2}s{files} ({})",
            s.name,
            s.kind_name,
            if st.status == "ran" {
                "ran,"
            } else {
                "reused,"
            },
            slot.summary.rows,
            st.seconds,
            st.reasons.join("; ")
        ))
    }

    fn input_fingerprints(&self, id: usize) -> anyhow::Result<Vec<Option<String>>> {
        self.plan.stages[id]
            .input_ids
            .iter()
            .map(|&j| Ok(Some(self.slot(j)?.fingerprint.clone())))
            .collect()
    }

    /// Decides stage `id` and runs it, or takes its cached output.
    fn stage(&self, id: usize) -> anyhow::Result<Slot> {
        let t0 = Instant::now();
        let s = &self.plan.stages[id];
        let recipe = self.judge.recipe(id, &self.input_fingerprints(id)?);
        if let Kind::Ingest(ing) = &s.kind {
            return self.ingest_stage(id, ing, recipe, t0);
        }
        let d = self.judge.decide(id, recipe, true, Vec::new());
        let fingerprint = d.fingerprint.clone().unwrap_or_default();
        if let (Action::Reuse, Some(entry)) = (d.action, d.entry) {
            return Ok(Slot {
                fingerprint,
                recipe: d.recipe,
                summary: entry.summary.clone(),
                entry: Some(entry),
                frames: Mutex::new(None),
                state: Mutex::new(SlotState {
                    status: "reused",
                    reasons: d.reasons,
                    seconds: t0.elapsed().as_secs_f64(),
                }),
                files: None,
            });
        }
        let (frames, summary) = self.compute(id)?;
        self.store(id, &fingerprint, Some(&frames), &summary, Vec::new());
        Ok(Slot {
            fingerprint,
            recipe: d.recipe,
            summary,
            entry: None,
            frames: Mutex::new(Some(Arc::new(frames))),
            state: Mutex::new(SlotState {
                status: "ran",
                reasons: d.reasons,
                seconds: t0.elapsed().as_secs_f64(),
            }),
            files: None,
        })
    }

    /// Runs a (non-ingest) stage on its inputs.
    fn compute(&self, id: usize) -> anyhow::Result<(Frames, StageSummary)> {
        let s = &self.plan.stages[id];
        let mut tables = Vec::new();
        for (&j, name) in s.input_ids.iter().zip(&s.inputs) {
            tables.push((name.clone(), self.frames(j)?.table.clone()));
        }
        let out = s
            .kind
            .stage()
            .run(&self.ctx(id), &Inputs { tables })
            .map_err(|e| stage_error(&s.name, &s.kind_name, e))?;
        let table = out
            .table
            .collect()
            .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
        let summary = row_fate::summarize(
            &table,
            out.rejects.as_ref(),
            out.dropped.as_ref(),
            s.kind.stage().row_level(),
            out.files,
            None,
        )?;
        Ok((
            Frames {
                table,
                rejects: out.rejects,
                dropped: out.dropped,
            },
            summary,
        ))
    }

    /// Queues the caching of a stage output (ran stages keep their frames in memory, so the
    /// run itself never reads what it is writing).
    fn store(
        &self,
        id: usize,
        fp: &str,
        frames: Option<&Frames>,
        summary: &StageSummary,
        file_keys: Vec<String>,
    ) {
        let name = self.plan.stages[id].name.clone();
        let (cache, log, fp) = (self.cache.clone(), self.log.clone(), fp.to_string());
        let (frames, summary) = (frames.cloned(), summary.clone());
        self.writer.queue(move || {
            if let Err(e) = cache.store_stage(&fp, &name, frames.as_ref(), &summary, file_keys) {
                log.warn(&format!("could not cache the output of `{name}`: {e:#}"));
            }
        });
    }

    /// An ingest stage: files with a cached parse are not parsed again.
    fn ingest_stage(
        &self,
        id: usize,
        ing: &ingest::Ingest,
        mut recipe: Recipe,
        t0: Instant,
    ) -> anyhow::Result<Slot> {
        let s = &self.plan.stages[id];
        let source = ing.source(self.sources)?;
        let parser = ing.parser(&self.ctx(id))?;
        let src = recipe
            .source
            .clone()
            .ok_or_else(|| RunError::Internal(format!("`{}` has no source recipe", s.name)))?;
        let states = self.judge.files(id, source, &src)?;
        let parsed: Vec<Option<ParsedFile>> = states
            .par_iter()
            .map(|st| -> anyhow::Result<Option<ParsedFile>> {
                if st.cached.is_some() {
                    return Ok(None);
                }
                let p = parser
                    .parse(&st.file)
                    .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
                self.store_file(&src, &p);
                Ok(Some(p))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut notes = Vec::new();
        let mut refs = Vec::new();
        for (st, p) in states.iter().zip(&parsed) {
            let r = self
                .judge
                .file_ref(st, p.as_ref().map(|p| (p.late, p.read.hash.as_str())))
                .ok_or_else(|| RunError::Internal(format!("{} was not parsed", st.file.rel)))?;
            refs.push(r);
            notes.extend(st.note.clone());
        }
        let file_keys: Vec<String> = refs
            .iter()
            .map(|r| src.file_key(&r.site, &r.file, &r.hash, r.run_date.as_deref()))
            .collect();
        if let Some(rs) = recipe.source.as_mut() {
            rs.files = refs;
        }
        let n_parsed = parsed.iter().filter(|p| p.is_some()).count() as u64;
        let files = Some((n_parsed, states.len() as u64 - n_parsed));
        let d = self.judge.decide(id, recipe, true, notes);
        let fingerprint = d.fingerprint.clone().unwrap_or_default();
        if let (Action::Reuse, Some(entry)) = (d.action, d.entry) {
            return Ok(Slot {
                fingerprint,
                recipe: d.recipe,
                summary: entry.summary.clone(),
                entry: Some(entry),
                frames: Mutex::new(None),
                state: Mutex::new(SlotState {
                    status: "reused",
                    reasons: d.reasons,
                    seconds: t0.elapsed().as_secs_f64(),
                }),
                files: Some((0, states.len() as u64)),
            });
        }
        let (frames, summary) = self.ingest_frames(id, &parser, &src, &states, parsed)?;
        self.store(id, &fingerprint, None, &summary, file_keys);
        Ok(Slot {
            fingerprint,
            recipe: d.recipe,
            summary,
            entry: None,
            frames: Mutex::new(Some(Arc::new(frames))),
            state: Mutex::new(SlotState {
                status: "ran",
                reasons: d.reasons,
                seconds: t0.elapsed().as_secs_f64(),
            }),
            files,
        })
    }

    fn store_file(&self, src: &crate::fingerprint::SourceRecipe, p: &ParsedFile) {
        let bound = self.judge.bound.clone();
        let key = src.file_key(
            &p.read.site,
            &p.read.file,
            &p.read.hash,
            p.late.then_some(bound.as_str()),
        );
        let (cache, log) = (self.cache.clone(), self.log.clone());
        let (table, rejects, read) = (p.table.clone(), p.rejects.clone(), p.read.clone());
        let (latest, late) = (p.latest_date.map(|d| d.to_string()), p.late);
        self.writer.queue(move || {
            if let Err(e) = cache.store_file(&key, &table, &rejects, &read, &bound, latest, late) {
                log.warn(&format!(
                    "could not cache the parse of {}: {e:#}",
                    read.file
                ));
            }
        });
    }

    /// The ingest output from fresh parses and cached ones; a cached parse that fails its
    /// check on reading is parsed again.
    fn ingest_frames(
        &self,
        id: usize,
        parser: &FileParser,
        src: &crate::fingerprint::SourceRecipe,
        states: &[FileState],
        parsed: Vec<Option<ParsedFile>>,
    ) -> anyhow::Result<(Frames, StageSummary)> {
        let s = &self.plan.stages[id];
        let parts: Vec<ParsedFile> = states
            .par_iter()
            .zip(parsed)
            .map(|(st, p)| -> anyhow::Result<ParsedFile> {
                if let Some(p) = p {
                    return Ok(p);
                }
                if let Some(e) = &st.cached {
                    match self.cache.load_file(e) {
                        Ok((table, rejects)) => {
                            return Ok(ParsedFile {
                                table,
                                rejects,
                                read: e.read.clone(),
                                latest_date: None,
                                late: e.late,
                            });
                        }
                        Err(why) => self.log.warn(&format!(
                            "cached parse of {} unusable ({why}); parsing it again",
                            st.file.rel
                        )),
                    }
                }
                let p = parser
                    .parse(&st.file)
                    .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
                self.store_file(src, &p);
                Ok(p)
            })
            .collect::<anyhow::Result<_>>()?;
        let accepted: BTreeMap<String, u64> = parts
            .iter()
            .map(|p| (p.read.file.clone(), p.table.height() as u64))
            .collect();
        let out = ingest::assemble(parts)?;
        let table = out
            .table
            .collect()
            .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
        let summary = row_fate::summarize(
            &table,
            out.rejects.as_ref(),
            None,
            true,
            out.files,
            Some(accepted),
        )?;
        Ok((
            Frames {
                table,
                rejects: out.rejects,
                dropped: None,
            },
            summary,
        ))
    }

    /// The frames of stage `id`: in memory, else from the cache, else computed again.
    fn frames(&self, id: usize) -> anyhow::Result<Arc<Frames>> {
        let slot = self.slot(id)?;
        let mut guard = slot.frames.lock().map_err(|_| poisoned())?;
        if let Some(f) = guard.as_ref() {
            return Ok(f.clone());
        }
        let s = &self.plan.stages[id];
        let t0 = Instant::now();
        let loaded = match (&s.kind, &slot.entry) {
            (Kind::Ingest(ing), _) => {
                // Cached parses are checked file by file as they are read.
                let source = ing.source(self.sources)?;
                let parser = ing.parser(&self.ctx(id))?;
                let src = slot.recipe.source.clone().ok_or_else(|| {
                    RunError::Internal(format!("`{}` has no source recipe", s.name))
                })?;
                let states = self.judge.files(id, source, &src)?;
                let none = states.iter().map(|_| None).collect();
                Ok(self.ingest_frames(id, &parser, &src, &states, none)?.0)
            }
            (_, Some(e)) => self.cache.load_stage(e),
            (_, None) => Err("no cached output".to_string()),
        };
        let frames = match loaded {
            Ok(f) => f,
            Err(why) => {
                self.log.warn(&format!(
                    "cached output of `{}` unusable ({why}); running it again",
                    s.name
                ));
                let (frames, summary) = self.compute(id)?;
                self.store(id, &slot.fingerprint, Some(&frames), &summary, Vec::new());
                let mut st = slot.state.lock().map_err(|_| poisoned())?;
                st.status = "ran";
                st.reasons.push(format!("cached output unusable ({why})"));
                st.seconds += t0.elapsed().as_secs_f64();
                frames
            }
        };
        let frames = Arc::new(frames);
        *guard = Some(frames.clone());
        Ok(frames)
    }

    /// One part of a stage's output (rejects or dropped) without loading its table when it
    /// is cached.
    fn part(&self, id: usize, role: &str) -> anyhow::Result<Option<DataFrame>> {
        let slot = self.slot(id)?;
        let pick = |f: &Frames| match role {
            "rejects" => f.rejects.clone(),
            _ => f.dropped.clone(),
        };
        if let Some(f) = slot.frames.lock().map_err(|_| poisoned())?.as_ref() {
            return Ok(pick(f));
        }
        let loaded = match (&self.plan.stages[id].kind, &slot.entry) {
            (Kind::Ingest(_), Some(e)) if role == "rejects" => self.ingest_rejects(e),
            (Kind::Ingest(_), _) => Ok(None),
            (_, Some(e)) => self.cache.load_stage_part(e, role),
            (_, None) => Err("no cached output".into()),
        };
        match loaded {
            Ok(df) => Ok(df),
            Err(_) => Ok(pick(self.frames(id)?.as_ref())),
        }
    }

    fn ingest_rejects(&self, e: &StageEntry) -> Result<Option<DataFrame>, String> {
        let mut parts = Vec::new();
        for k in &e.file_keys {
            let fe = match self.cache.file_entry(k) {
                cache::Lookup::Found(fe) => fe,
                _ => return Err(format!("file entry {k} unusable")),
            };
            let r = self.cache.load_file_rejects(&fe)?;
            if r.height() > 0 {
                parts.push(r.lazy());
            }
        }
        let df = if parts.is_empty() {
            crate::rejects::empty()
        } else {
            concat(parts, UnionArgs::default()).and_then(|lf| lf.collect())
        };
        df.map(Some).map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        run_dir: &Path,
        run_id: &str,
        started_utc: &str,
        started: Instant,
        opts: &RunOptions,
        previous: Option<&(PathBuf, Manifest)>,
    ) -> anyhow::Result<Manifest> {
        let plan = self.plan;
        let n = plan.stages.len();
        let slots: Vec<&Slot> = (0..n)
            .map(|id| self.slot(id))
            .collect::<anyhow::Result<_>>()?;
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
        let prov = |table: &str, fp: &str| Provenance {
            pipeline: plan.spec.header.pipeline.clone(),
            pipeline_hash: plan.pipeline_hash.clone(),
            table: table.to_string(),
            stage_fingerprint: fp.to_string(),
            engine_version: crate::ENGINE_VERSION.to_string(),
        };
        let rejects_of = || -> anyhow::Result<DataFrame> {
            let parts = (0..n)
                .map(|id| {
                    if slots[id].summary.rejected == 0 {
                        Ok(None)
                    } else {
                        self.part(id, "rejects")
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            row_fate::all_rejects(plan, &parts, &files)
        };
        let over = row_fate::over_limit(plan, &fates);
        if !over.is_empty() {
            let mut r = rejects_of()?;
            let _ = publish::write_parquet(
                &mut r,
                &run_dir.join("rejects.parquet"),
                &prov("rejects", &all_fp),
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
            self.workers,
            |(name, key, fp, job)| -> anyhow::Result<TableRecord> {
                let (name, key, fp) = (name.clone(), key.clone(), fp.clone());
                publish::failpoint(&format!("write:{name}"))?;
                let file = format!("{name}.parquet");
                let dest = run_dir.join(&file);
                let sort = match &job {
                    Job::Stage(_) => key.join("\u{1f}"),
                    _ => "engine".to_string(),
                };
                let ck = content_key(&[
                    &name,
                    &fp,
                    &plan.spec.header.pipeline,
                    &plan.pipeline_hash,
                    crate::ENGINE_VERSION,
                    &sort,
                ]);
                if let Some(prev) = link_previous(previous, &ck, &dest) {
                    return Ok(TableRecord {
                        name,
                        file,
                        key,
                        content_key: ck,
                        status: "linked".into(),
                        ..prev
                    });
                }
                let mut df = match *job {
                    Job::Stage(id) => sorted(&self.frames(id)?.table, &plan.stages[id].sort_by)?,
                    Job::Rejects => rejects_of()?,
                    Job::Duplicates => {
                        let parts = (0..n)
                            .map(|id| {
                                if slots[id].summary.set_aside == 0 {
                                    Ok(None)
                                } else {
                                    self.part(id, "dropped")
                                }
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        row_fate::all_dropped(&parts)?
                    }
                    Job::RowFate(f) => row_fate::fate_table(f)?,
                };
                let (bytes, hash) = publish::write_parquet(&mut df, &dest, &prov(&name, &fp))?;
                Ok(TableRecord {
                    name,
                    file,
                    rows: df.height() as u64,
                    bytes,
                    blake3: hash,
                    key,
                    content_key: ck,
                    status: "written".into(),
                })
            },
        )?;

        let mut reuse = ReuseSummary::default();
        let mut stages = Vec::with_capacity(n);
        for (id, (s, slot)) in plan.stages.iter().zip(&slots).enumerate() {
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
            let _ = id;
        }
        for t in &tables {
            if t.status == "linked" {
                reuse.tables_linked += 1;
            } else {
                reuse.tables_written += 1;
            }
        }
        let (files_hashed, bytes_hashed) = self.judge.hashes.read();
        reuse.files_hashed = files_hashed;
        reuse.bytes_hashed = bytes_hashed;
        let manifest = Manifest {
            run_id: run_id.to_string(),
            pipeline: plan.spec.header.pipeline.clone(),
            pipeline_file: plan.spec.path.display().to_string(),
            pipeline_hash: plan.pipeline_hash.clone(),
            engine_version: crate::ENGINE_VERSION.to_string(),
            run_date: self.run_date.to_string(),
            started_utc: started_utc.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            threads: opts.threads,
            reuse,
            inputs: files.into_iter().cloned().collect(),
            stages,
            tables,
            row_fate: fates,
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
        publish::failpoint("manifest")?;
        let json = serde_json::to_vec_pretty(&manifest).context("serialising the manifest")?;
        publish::write_atomic(&run_dir.join("manifest.json"), &json)?;
        let total_rejected: u64 = manifest.row_fate.iter().map(|f| f.rejected).sum();
        self.log.info(&format!(
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
}
