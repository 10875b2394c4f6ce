//! Executing the stages of a run: each one, once the stages it reads have finished, runs or is
//! reused from the cache; outputs are read from the cache only when a later stage or the
//! publisher needs them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::NaiveDate;
use polars::prelude::*;
use rayon::prelude::*;

use crate::cache::{self, Cache, Frames, PartRows, StageEntry, StageSummary};
use crate::error::{DataError, RunError};
use crate::fingerprint::Recipe;
use crate::log::Log;
use crate::plan::Plan;
use crate::publish;
use crate::reuse::{Action, FileState, Judge};
use crate::row_fate;
use crate::source::ResolvedSource;
use crate::stages::ingest::{self, FileParser, ParsedFile};
use crate::stages::{Inputs, Kind, StageCtx};

mod batch;
pub(crate) use batch::batch_plan;

/// About the bytes `table` holds: its buffers' sizes. Text counts its views and the buffers
/// they point into, which are known without reading every view (polars' `estimated_size`
/// adds up the length of every string of an array the first time it is asked, one pass over
/// each text column of every table the run holds).
fn held_size(table: &DataFrame) -> u64 {
    use polars_arrow::array::Array;
    let column = |c: &Column| -> u64 {
        // A column of one value repeated holds that one value: nothing worth counting.
        let Some(s) = c.as_series() else {
            return 0;
        };
        match s.str() {
            Ok(text) => text
                .downcast_iter()
                .map(|a| {
                    let validity = a.validity().map_or(0, |v| v.len().div_ceil(8));
                    (a.len() * 16 + a.total_buffer_len() + validity) as u64
                })
                .sum(),
            Err(_) => s.estimated_size() as u64,
        }
    };
    table.columns().iter().map(column).sum()
}

/// A stage's outcome in this run; its frames are loaded from the cache only when needed.
pub(crate) struct Slot {
    pub(crate) fingerprint: String,
    /// Where its output is cached (see `Decision::key`).
    pub(crate) key: String,
    /// What the stages that read it see of its output (see [`StageSummary::content`]).
    pub(crate) content: String,
    pub(crate) recipe: Recipe,
    pub(crate) summary: StageSummary,
    /// Where its output is cached (`None` when the cache could not be written).
    pub(crate) entry: Option<StageEntry>,
    pub(crate) frames: Mutex<Option<Arc<Frames>>>,
    /// The table was dropped after its last consumer ran (rejects and dropped rows are kept).
    pub(crate) released: AtomicBool,
    pub(crate) state: Mutex<SlotState>,
    /// Ingest: files parsed and files taken from the cache.
    pub(crate) files: Option<(u64, u64)>,
}

impl Slot {
    /// A stage whose output is taken from its cache entry (loaded when first read).
    fn reused(
        fingerprint: String,
        key: String,
        recipe: Recipe,
        entry: StageEntry,
        reasons: Vec<String>,
        t0: Instant,
        files: Option<(u64, u64)>,
    ) -> Slot {
        Slot {
            content: entry.summary.content.clone().unwrap_or(key.clone()),
            key,
            fingerprint,
            recipe,
            summary: entry.summary.clone(),
            entry: Some(entry),
            frames: Mutex::new(None),
            released: AtomicBool::new(false),
            state: Mutex::new(SlotState {
                status: "reused",
                reasons,
                seconds: t0.elapsed().as_secs_f64(),
            }),
            files,
        }
    }

    /// A stage that ran, its output in memory.
    #[allow(clippy::too_many_arguments)]
    fn ran(
        fingerprint: String,
        key: String,
        content: String,
        recipe: Recipe,
        (frames, summary): (Frames, StageSummary),
        reasons: Vec<String>,
        t0: Instant,
        files: Option<(u64, u64)>,
    ) -> Slot {
        Slot {
            fingerprint,
            key,
            content,
            recipe,
            summary,
            entry: None,
            frames: Mutex::new(Some(Arc::new(frames))),
            released: AtomicBool::new(false),
            state: Mutex::new(SlotState {
                status: "ran",
                reasons,
                seconds: t0.elapsed().as_secs_f64(),
            }),
            files,
        }
    }
}

/// What may change while a run goes on: a reused stage whose cached output turns out broken
/// when read is run again.
pub(crate) struct SlotState {
    pub(crate) status: &'static str,
    pub(crate) reasons: Vec<String>,
    pub(crate) seconds: f64,
}

/// Of the stages ready, one that lets go of more held tables by this many bytes starts
/// first, whatever chain it heads: finishing a large table's readers before starting the next
/// large table keeps fewer of them in memory at once. Smaller differences leave the order to
/// the chains.
const RELEASE_STEP: u64 = 64 << 20;

/// Rows of an input from which a row-level stage counts as large (see [`Engine::execute`]).
const LARGE_ROWS: u64 = 1_000_000;

/// The place in `ready` of the stage to start next: the one letting go of the most held
/// bytes (`frees`, in steps of [`RELEASE_STEP`]), then the one heading the costliest chain
/// still to come (`chain`), then the first in the plan.
fn next_stage(ready: &[usize], chain: &[u64], frees: impl Fn(usize) -> u64) -> Option<usize> {
    ready
        .iter()
        .enumerate()
        .max_by_key(|&(_, &id)| (frees(id) / RELEASE_STEP, chain[id], std::cmp::Reverse(id)))
        .map(|(place, _)| place)
}

/// The stages of `ready` that may start now: none that is `large` while `large_running`
/// large stages run.
fn startable(ready: &[usize], large_running: usize, large: impl Fn(usize) -> bool) -> Vec<usize> {
    ready
        .iter()
        .copied()
        .filter(|&id| large_running == 0 || !large(id))
        .collect()
}

/// Whether the first of a stage's inputs (`input_ids`) is read by no other stage still to run
/// (`readers_left`: of each table, the stages still to run that read it, this one included)
/// and by this one only once: the stage may then consume it.
fn first_read_last(input_ids: &[usize], readers_left: impl Fn(usize) -> usize) -> bool {
    input_ids.first().is_some_and(|&j| {
        readers_left(j) == 1 && input_ids.iter().filter(|&&k| k == j).count() == 1
    })
}

/// A stage's failure as a data error naming the stage (I/O and internal errors keep their kind).
pub(crate) fn stage_error(name: &str, kind: &str, e: anyhow::Error) -> anyhow::Error {
    if e.is::<DataError>() || e.is::<RunError>() {
        return e.context(format!("stage `{name}` ({kind}) failed"));
    }
    DataError::Stage {
        stage: name.to_string(),
        message: format!("{e:#}"),
    }
    .into()
}

/// What `f` returns, a panic in it reported as an internal error naming `what` panicked.
pub(crate) fn unpanicked<R>(
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(RunError::Internal(format!("{} panicked: {message}", what())).into())
    })
}

pub(crate) fn poisoned() -> anyhow::Error {
    RunError::Internal("poisoned stage slot".into()).into()
}

/// One run's stages: the plan, how to decide on reuse, the cache, and every stage's slot.
pub(crate) struct Engine<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) judge: Judge<'a>,
    pub(crate) cache: &'a Cache,
    pub(crate) sources: &'a [ResolvedSource],
    pub(crate) data_dir: &'a Path,
    pub(crate) base_dir: &'a Path,
    pub(crate) run_date: NaiveDate,
    pub(crate) log: &'a Log,
    pub(crate) slots: Vec<OnceLock<Slot>>,
    /// Stages (and published tables) handled at once.
    pub(crate) workers: usize,
    /// The folder this run publishes into (renamed into place when the run succeeds).
    pub(crate) run_dir: &'a Path,
    pub(crate) previous: Option<&'a (std::path::PathBuf, crate::manifest::Manifest)>,
    /// Tables already published, by stage: a stage that runs publishes its table at once,
    /// so it need not stay in memory until the end of the run.
    pub(crate) published: Vec<OnceLock<crate::manifest::TableRecord>>,
    /// A run in subject batches: an ingest lets go of each file's table once it is cached,
    /// keeping its counts and rejects (the batches read the files' tables back one by one).
    pub(crate) lean_ingests: AtomicBool,
}

/// Runs `f` on every item with at most `workers` OS threads, results in item order.
/// Not rayon: a stage waits on a slot lock for its inputs, and a rayon worker waiting there
/// could have stolen that very task from the stage holding the lock.
pub(crate) fn concurrently<T: Sync, R: Send>(
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
    pub(crate) fn ctx(&self, id: usize) -> StageCtx<'_> {
        StageCtx {
            name: &self.plan.stages[id].name,
            spec: &self.plan.spec,
            run_date: self.run_date,
            data_dir: self.data_dir,
            base_dir: self.base_dir,
            sources: self.sources,
        }
    }

    pub(crate) fn slot(&self, id: usize) -> anyhow::Result<&Slot> {
        self.slots[id].get().ok_or_else(|| {
            RunError::Internal(format!("stage `{}` did not run", self.plan.stages[id].name)).into()
        })
    }

    /// Runs every stage, each as soon as the stages it reads have finished (not wave by wave:
    /// a short stage does not wait for a long one it does not read), at most `workers` at
    /// once. Of the stages ready, one that is the last reader of large tables starts first
    /// (its tables are then let go of), else the one heading the costliest chain of stages
    /// still to come ([`next_stage`]). After a failure no stage starts; those running finish,
    /// and the first failure is returned.
    pub(crate) fn execute(&self) -> anyhow::Result<()> {
        let n = self.plan.stages.len();
        let bar = self.log.progress(n as u64);
        let inputs: Vec<Vec<usize>> = (0..n).map(|id| self.plan.distinct_inputs(id)).collect();
        let readers_of: Vec<Vec<usize>> = (0..n).map(|id| self.plan.consumers(id)).collect();
        // Stages still to run that read each table: an unpublished table is dropped when
        // the last of them has run, so peak memory holds only the tables still needed.
        let readers: Vec<AtomicUsize> = readers_of
            .iter()
            .map(|r| AtomicUsize::new(r.len()))
            .collect();
        // What a stage costs, guessed before it runs: the bytes of raw files it reads (an
        // ingest), else the most of its inputs. A stage's priority is its cost plus the
        // greatest priority among its readers: the costliest chain still to come starts first
        // (on the reference pipeline, the diary's ingest, which heads the longest chain). The
        // waves are in dependency order.
        let mut cost = vec![0u64; n];
        for &id in self.plan.waves.iter().flatten() {
            cost[id] = match self.plan.stages[id].kind.stage().reads_source() {
                Some(source) => self
                    .sources
                    .iter()
                    .filter(|s| s.name == source)
                    .flat_map(|s| &s.files)
                    .map(|f| std::fs::metadata(&f.path).map_or(0, |m| m.len()))
                    .sum(),
                None => inputs[id].iter().map(|&j| cost[j]).max().unwrap_or(0),
            };
        }
        let mut chain = vec![0u64; n];
        for &id in self.plan.waves.iter().rev().flatten() {
            let below = readers_of[id].iter().map(|&r| chain[r]).max().unwrap_or(0);
            chain[id] = cost[id].max(1).saturating_add(below);
        }
        // Bytes of each finished stage's table while it is held for its readers.
        let mut held = vec![0u64; n];
        // Stages already run (the ingests, when a run in subject batches found nothing after
        // them to run) are done: only the inputs still to run are waited for.
        let done = |id: usize| self.slots[id].get().is_some();
        let mut waiting: Vec<usize> = inputs
            .iter()
            .map(|ins| ins.iter().filter(|&&j| !done(j)).count())
            .collect();
        let mut ready: Vec<usize> = (0..n).filter(|&id| !done(id) && waiting[id] == 0).collect();
        for id in (0..n).filter(|&id| done(id)) {
            held[id] = self.held_bytes(id);
        }
        // A large stage (one whose table may be far larger than what the run holds: a daily
        // series, or a row-level stage over a table of a million rows or more) does not start
        // while another runs: two of them side by side set the run's peak, and every page of
        // the peak is a page fault the first time.
        let large = |id: usize| {
            let kind = self.plan.stages[id].kind.stage();
            kind.may_outgrow_inputs()
                || (kind.row_level()
                    && inputs[id].iter().any(|&j| {
                        self.slots[j]
                            .get()
                            .is_some_and(|s| s.summary.rows >= LARGE_ROWS)
                    }))
        };
        let mut large_running = 0usize;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, anyhow::Result<()>)>();
        let mut running = 0usize;
        let mut failure: Option<anyhow::Error> = None;
        std::thread::scope(|scope| {
            loop {
                while failure.is_none() && running < self.workers.max(1) {
                    let allowed = startable(&ready, large_running, large);
                    let next = next_stage(&allowed, &chain, |id| {
                        self.frees(&inputs[id], &readers, &held)
                    });
                    let Some(place) = next else { break };
                    let id = allowed[place];
                    ready.retain(|&r| r != id);
                    if large(id) {
                        large_running += 1;
                    }
                    running += 1;
                    let hand_over = self.hands_over(id, &readers);
                    let (done_tx, bar, readers, inputs) =
                        (done_tx.clone(), &bar, &readers, &inputs);
                    scope.spawn(move || {
                        // A panic is reported as the stage's failure: the loop waits for a
                        // report from every stage it started.
                        let r = unpanicked(
                            || format!("stage `{}`", self.plan.stages[id].name),
                            || self.run_stage(id, &inputs[id], readers, bar, hand_over),
                        );
                        // The receiver lives until every spawned stage has reported.
                        let _ = done_tx.send((id, r));
                    });
                }
                if running == 0 {
                    break;
                }
                let Ok((id, r)) = done_rx.recv() else { break };
                running -= 1;
                if large(id) {
                    large_running -= 1;
                }
                match r {
                    Ok(()) => {
                        held[id] = self.held_bytes(id);
                        for &r in &readers_of[id] {
                            waiting[r] -= 1;
                            if waiting[r] == 0 {
                                ready.push(r);
                            }
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        bar.finish_and_clear();
        match failure {
            Some(e) => Err(e),
            None if self.slots.iter().any(|s| s.get().is_none()) => Err(RunError::Internal(
                "a stage was never ready to run: the plan has a cycle".into(),
            )
            .into()),
            None => Ok(()),
        }
    }

    /// Whether stage `id`, about to start, is handed its first input's table to consume
    /// ([`Engine::compute`]): its kind consumes its input, no other stage still to run reads
    /// that table (`readers`), and it reads the table once.
    fn hands_over(&self, id: usize, readers: &[AtomicUsize]) -> bool {
        let s = &self.plan.stages[id];
        s.kind.stage().consumes_input()
            && first_read_last(&s.input_ids, |j| readers[j].load(Ordering::Acquire))
    }

    /// Bytes of the table of stage `id` held in memory now (0 when released or not loaded).
    fn held_bytes(&self, id: usize) -> u64 {
        let Some(slot) = self.slots[id].get() else {
            return 0;
        };
        if slot.released.load(Ordering::Acquire) {
            return 0;
        }
        match slot.frames.lock() {
            Ok(g) => g.as_ref().map_or(0, |f| held_size(&f.table)),
            Err(_) => 0,
        }
    }

    /// Bytes a stage reading `inputs` would let go of when it finishes: the held tables it
    /// is the last stage to read. Each table counts whole, though one that shares columns
    /// with a table still held (a stage that adds columns to its input keeps the input's
    /// buffers) frees less: this only orders the stages, and no result depends on the order.
    fn frees(&self, inputs: &[usize], readers: &[AtomicUsize], held: &[u64]) -> u64 {
        inputs
            .iter()
            .filter(|&&j| readers[j].load(Ordering::Acquire) == 1)
            .filter(|&&j| {
                self.slots[j]
                    .get()
                    .is_some_and(|s| !s.released.load(Ordering::Acquire))
            })
            .map(|&j| held[j])
            .sum()
    }

    /// Runs stage `id` (its distinct inputs `inputs` have finished), logs it, and lets go of
    /// the tables no stage still to run reads.
    fn run_stage(
        &self,
        id: usize,
        inputs: &[usize],
        readers: &[AtomicUsize],
        bar: &indicatif::ProgressBar,
        hand_over: bool,
    ) -> anyhow::Result<()> {
        let s = &self.plan.stages[id];
        publish::failpoint(&format!("stage:{}", s.name))?;
        let slot = self.stage(id, hand_over)?;
        let ran = slot.state.lock().map_err(|_| poisoned())?.status == "ran";
        self.settle(id, slot, bar)?;
        // A reused stage may still have to run if its cached output turns out broken,
        // and then needs its inputs: only a stage that ran lets go of them.
        if ran {
            for &j in inputs {
                if readers[j].fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.release_table(j)?;
                }
            }
            if readers[id].load(Ordering::Acquire) == 0 {
                self.release_table(id)?;
            }
        }
        Ok(())
    }

    /// Records the outcome of stage `id`: logs that it ran or was reused (plain log lines), or
    /// advances the progress bar, and sets its slot.
    fn settle(&self, id: usize, slot: Slot, bar: &indicatif::ProgressBar) -> anyhow::Result<()> {
        let name = &self.plan.stages[id].name;
        let line = self.describe(id, &slot)?;
        if self.log.plain_steps() {
            self.log.info(&line);
        } else {
            bar.set_message(name.clone());
            bar.inc(1);
        }
        self.slots[id]
            .set(slot)
            .map_err(|_| RunError::Internal(format!("stage `{name}` ran twice")).into())
    }

    /// Drops the table of stage `id` unless it is still to be published (the publisher reads
    /// it at the end); its rejects and dropped rows stay for row fate.
    fn release_table(&self, id: usize) -> anyhow::Result<()> {
        self.let_go(id).map(|_| ())
    }

    /// [`Engine::release_table`], returning the frames the slot held (with its table) when
    /// it let go of them; `None` when the table stays (still to be published), is not in
    /// memory, or was let go of before.
    fn let_go(&self, id: usize) -> anyhow::Result<Option<Arc<Frames>>> {
        if self.plan.stages[id].publish && self.published(id).is_none() {
            return Ok(None);
        }
        let slot = self.slot(id)?;
        let mut guard = slot.frames.lock().map_err(|_| poisoned())?;
        if slot.released.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(f) = guard.take() else {
            return Ok(None);
        };
        *guard = Some(Arc::new(Frames {
            table: DataFrame::empty(),
            rejects: f.rejects.clone(),
            dropped: f.dropped.clone(),
            rows: None,
        }));
        slot.released.store(true, Ordering::Release);
        Ok(Some(f))
    }

    /// True when the cache keeps the table of stage `id`: a published table (linked), or one of
    /// a kind whose table is worth keeping (see [`crate::stages::Stage::cache_table`]) that
    /// does not say `cache: false`.
    fn table_cached(&self, id: usize) -> bool {
        let s = &self.plan.stages[id];
        s.publish || (s.cache && s.kind.stage().cache_table())
    }

    /// The published file of stage `id`, when it was published as it ran.
    pub(crate) fn published(&self, id: usize) -> Option<&crate::manifest::TableRecord> {
        self.published[id].get()
    }

    /// Publishes the table of stage `id`, which just ran, into the run folder (sorted by
    /// [`crate::run::sorted`] in [`Engine::compute`]); the cache entry then links to that
    /// file. `None` for a stage that is not published.
    fn publish_now(
        &self,
        id: usize,
        fingerprint: &str,
        table: &DataFrame,
    ) -> anyhow::Result<Option<cache::TableFile>> {
        let s = &self.plan.stages[id];
        if !s.publish {
            return Ok(None);
        }
        let rec = crate::run::publish_table(
            self.plan,
            self.run_dir,
            self.previous,
            &s.name,
            &s.sort_by,
            fingerprint,
            false,
            None,
            |dest, prov| crate::run::write_whole(table.clone(), dest, prov),
        )?;
        let file = cache::TableFile {
            path: self.run_dir.join(&rec.file),
            bytes: rec.bytes,
            blake3: rec.blake3.clone(),
        };
        // A stage publishes once: it runs at most once per run.
        let _ = self.published[id].set(rec);
        Ok(Some(file))
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

    /// Something of each input's slot: its fingerprint, or its content's name.
    fn of_inputs(
        &self,
        id: usize,
        pick: impl Fn(&Slot) -> &String,
    ) -> anyhow::Result<Vec<Option<String>>> {
        self.plan.stages[id]
            .input_ids
            .iter()
            .map(|&j| Ok(Some(pick(self.slot(j)?).clone())))
            .collect()
    }

    /// Decides stage `id` and runs it, or takes its cached output. `hand_over`: see
    /// [`Engine::compute`].
    fn stage(&self, id: usize, hand_over: bool) -> anyhow::Result<Slot> {
        let t0 = Instant::now();
        let s = &self.plan.stages[id];
        let recipe = self
            .judge
            .recipe(id, &self.of_inputs(id, |s| &s.fingerprint)?);
        if let Kind::Ingest(ing) = &s.kind {
            return self.ingest_stage(id, ing, recipe, t0);
        }
        let d = self.judge.decide(
            id,
            recipe,
            true,
            Vec::new(),
            &self.of_inputs(id, |s| &s.content)?,
        );
        let fingerprint = d.fingerprint.clone().unwrap_or_default();
        let key = d.key.clone().unwrap_or_default();
        if let (Action::Reuse, Some(entry)) = (d.action, d.entry) {
            return Ok(Slot::reused(
                fingerprint,
                key,
                d.recipe,
                entry,
                d.reasons,
                t0,
                None,
            ));
        }
        let (mut frames, mut summary) = self.compute(id, hand_over)?;
        let mut reasons = d.reasons;
        let unchanged = self.unchanged_output(id, &frames.table);
        let content = match &unchanged {
            Some((content, _)) => {
                reasons.push("output unchanged, so the stages reading it need not run".into());
                content.clone()
            }
            None => key.clone(),
        };
        summary.content = Some(content.clone());
        let earlier = unchanged.as_ref().map(|(_, e)| e);
        self.keep(id, &fingerprint, &key, &mut frames, earlier, &summary)?;
        Ok(Slot::ran(
            fingerprint,
            key,
            content,
            d.recipe,
            (frames, summary),
            reasons,
            t0,
            None,
        ))
    }

    /// When stage `id` ran again and made exactly the table of the last published run, the
    /// name of that table's content ([`StageSummary::content`]) and the earlier cache entry;
    /// the stages reading it then see an unchanged input, and the new entry links the earlier
    /// table part instead of encoding the table again (row numbers are written anew: they
    /// change with the input). Only asked where some stage reads the table, and only of an
    /// earlier output whose cache entry is intact (its parts' hashes are checked on reading).
    fn unchanged_output(&self, id: usize, table: &DataFrame) -> Option<(String, StageEntry)> {
        // A table the cache does not keep has no earlier copy to compare with.
        if self.plan.consumers(id).is_empty()
            || self.judge.selection.forces(id).is_some()
            || !self.table_cached(id)
        {
            return None;
        }
        let before = self.judge.previous?.stage(&self.plan.stages[id].name)?;
        let crate::cache::Lookup::Found(entry) = self.cache.stage_entry(before.key()) else {
            return None;
        };
        if entry.summary.rows != table.height() as u64 {
            return None;
        }
        let old = self.cache.load_stage_table(&entry, None).ok()?;
        let same = old.schema() == table.schema() && old.equals_missing(table);
        same.then(|| {
            let content = entry
                .summary
                .content
                .clone()
                .unwrap_or(entry.fingerprint.clone());
            (content, entry)
        })
    }

    /// Runs (non-ingest) stage `id` on `tables`, its inputs by name: its table (sorted as it
    /// will be published, when it is: the stages reading it, now or from the cache in a later
    /// run, see it in that one order), the rest of what it made, and its counts.
    fn run_on(
        &self,
        id: usize,
        tables: Vec<(String, DataFrame)>,
    ) -> anyhow::Result<(DataFrame, crate::stages::StageOutput, StageSummary)> {
        let s = &self.plan.stages[id];
        let kind = s.kind.stage();
        // The first input's files (its SRCFILE column, shared, and its rows per file). Not of
        // a stage that consumes its input: that one builds its own column, and holding the
        // input's would keep it in memory.
        let first = match kind.consumes_input() {
            true => None,
            false => tables.first().and_then(|(_, t)| t.select(["SRCFILE"]).ok()),
        };
        let mut out = kind
            .run_owned(&self.ctx(id), Inputs { tables })
            .map_err(|e| stage_error(&s.name, &s.kind_name, e))?;
        let mut table = std::mem::replace(&mut out.table, DataFrame::empty().lazy())
            .collect()
            .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?;
        if s.publish {
            table = crate::run::sorted(&table, &s.sort_by)?;
        }
        let row_level = s.kind.stage().row_level();
        // A row-level stage that passed its input's SRCFILE column on (it added columns to the
        // input's rows) has the input's rows per file: the input's counts, when they cover
        // every row, are taken instead of counting millions of rows again.
        let counted = match (first, s.input_ids.first()) {
            (Some(files), Some(&j)) if row_level && row_fate::same_files_column(&files, &table) => {
                // (An input of a batch may have no slot here: its rows are counted.)
                self.slot(j).ok().and_then(|slot| {
                    let input = &slot.summary;
                    let n = table.height() as u64;
                    let all = input.accepted_by_file.values().sum::<u64>() == n;
                    (input.rows == n && all).then(|| input.accepted_by_file.clone())
                })
            }
            _ => None,
        };
        let summary = row_fate::summarize(
            &table,
            out.rejects.as_ref(),
            out.dropped.as_ref(),
            row_level,
            std::mem::take(&mut out.files),
            counted,
        )?;
        Ok((table, out, summary))
    }

    /// Runs a (non-ingest) stage on its inputs. `hand_over`: the stage is the last reader of
    /// its first input, which its slot then lets go of for the stage to consume
    /// ([`crate::stages::Stage::consumes_input`]).
    fn compute(&self, id: usize, hand_over: bool) -> anyhow::Result<(Frames, StageSummary)> {
        let s = &self.plan.stages[id];
        let mut tables = Vec::new();
        for (place, (&j, name)) in s.input_ids.iter().zip(&s.inputs).enumerate() {
            let table = match s.kind.stage().reads_columns(name) {
                Some(columns) => self.columns_of(j, &columns)?,
                None => match (place, hand_over) {
                    (0, true) => match self.let_go(j)? {
                        Some(frames) => Arc::unwrap_or_clone(frames).table,
                        None => self.frames(j)?.table.clone(),
                    },
                    _ => self.frames(j)?.table.clone(),
                },
            };
            tables.push((name.clone(), table));
        }
        let (table, out, summary) = self.run_on(id, tables)?;
        // Rows of an ingest's table, as the stage made them (a published table is sorted):
        // the cache may keep their numbers instead of the table.
        let rows = match (out.rows_of_input, s.input_ids.first()) {
            (Some(rows), Some(&j))
                if !s.publish && s.kind.stage().reads_columns(&s.inputs[0]).is_none() =>
            {
                // (No files: nothing would say the table's columns.)
                self.ingest_file_keys(j)?
                    .filter(|keys| !keys.is_empty())
                    .map(|file_keys| cache::RowsOf { file_keys, rows })
            }
            _ => None,
        };
        Ok((
            Frames {
                table,
                rejects: out.rejects,
                dropped: out.dropped,
                rows,
            },
            summary,
        ))
    }

    /// The keys of the files' entries the table of stage `id` is made of, in reading order,
    /// when it is an ingest.
    fn ingest_file_keys(&self, id: usize) -> anyhow::Result<Option<Vec<String>>> {
        if !matches!(self.plan.stages[id].kind, Kind::Ingest(_)) {
            return Ok(None);
        }
        Ok(self.slot(id)?.recipe.source.as_ref().map(|src| {
            src.files
                .iter()
                .map(|f| src.file_key(&f.site, &f.file, &f.hash, f.run_date.as_deref()))
                .collect()
        }))
    }

    /// Publishes the table of stage `id`, which just ran, and caches its output under `key`
    /// (linking the earlier table part when `same_as` holds the same table); the row numbers
    /// kept for the cache ([`cache::RowsOf`]) are let go of then.
    fn keep(
        &self,
        id: usize,
        fingerprint: &str,
        key: &str,
        frames: &mut Frames,
        same_as: Option<&StageEntry>,
        summary: &StageSummary,
    ) -> anyhow::Result<()> {
        let file = self.publish_now(id, fingerprint, &frames.table)?;
        self.store(id, key, Some(frames), file, same_as, summary, Vec::new());
        frames.rows = None;
        Ok(())
    }

    /// Caches a stage output, in the stage's own thread. (A writer thread of its own with a
    /// queue held every queued table until written: on 5,000 subjects that cost about 1-2 GB of
    /// peak memory and was no faster, the writes competing with the stages for the cores.)
    /// Failing to cache only warns: the run goes on.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        id: usize,
        fp: &str,
        frames: Option<&Frames>,
        published: Option<cache::TableFile>,
        same_as: Option<&StageEntry>,
        summary: &StageSummary,
        file_keys: Vec<String>,
    ) {
        let table = match (&published, same_as) {
            (Some(t), _) => cache::TablePart::Link(t),
            (None, _) if !self.table_cached(id) => cache::TablePart::Omit,
            (None, Some(earlier)) => cache::TablePart::Same(earlier),
            (None, None) => cache::TablePart::Write,
        };
        self.store_part(id, fp, frames, table, summary, file_keys, Vec::new());
    }

    /// Caches a stage output with its table as `table` says; failing to cache only warns.
    #[allow(clippy::too_many_arguments)]
    fn store_part(
        &self,
        id: usize,
        key: &str,
        frames: Option<&Frames>,
        table: cache::TablePart,
        summary: &StageSummary,
        file_keys: Vec<String>,
        written: Vec<cache::Part>,
    ) -> Option<StageEntry> {
        let name = &self.plan.stages[id].name;
        match self
            .cache
            .store_stage(key, name, frames, table, summary, file_keys, written)
        {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.log
                    .warn(&format!("could not cache the output of `{name}`: {e:#}"));
                None
            }
        }
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
        // A run in subject batches hashes a source's files, then parses them, each a piece at
        // a time, never holding a file's text or table whole; as many at once as the pool has
        // threads, across every ingest (the pool runs the parses). Otherwise each file is
        // hashed, looked up and, without a cached parse, parsed in turn (two or more at once):
        // a file read to be hashed is parsed from those bytes.
        let (states, parsed): (Vec<FileState>, Vec<Option<ParsedFile>>) =
            if self.lean_ingests.load(Ordering::Relaxed) {
                let states = self.judge.files(id, source, &src)?;
                let parsed = states
                    .par_iter()
                    .map(|st| match st.cached {
                        Some(_) => Ok(None),
                        None => self.parse_and_store(id, &parser, &src, st, None).map(Some),
                    })
                    .collect::<anyhow::Result<_>>()?;
                (states, parsed)
            } else {
                source
                    .files
                    .par_iter()
                    .map(|f| -> anyhow::Result<(FileState, Option<ParsedFile>)> {
                        let (st, bytes) = self.judge.file_keeping(id, f, &src)?;
                        if st.cached.is_some() {
                            return Ok((st, None));
                        }
                        let p = self.parse_and_store(id, &parser, &src, &st, bytes)?;
                        Ok((st, Some(p)))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .unzip()
            };
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
        let d = self.judge.decide(id, recipe, true, notes, &[]);
        let fingerprint = d.fingerprint.clone().unwrap_or_default();
        // An ingest reads no tables: its key is its fingerprint.
        let key = d.key.clone().unwrap_or_default();
        if let (Action::Reuse, Some(entry)) = (d.action, d.entry) {
            let files = Some((0, states.len() as u64));
            return Ok(Slot::reused(
                fingerprint,
                key,
                d.recipe,
                entry,
                d.reasons,
                t0,
                files,
            ));
        }
        // An ingest's table names its files, so a changed file always changes it: no
        // comparison with the earlier output.
        let output = self.ingest_frames(id, &parser, &src, &states, parsed)?;
        self.store(id, &key, None, None, None, &output.1, file_keys);
        Ok(Slot::ran(
            fingerprint,
            key.clone(),
            key,
            d.recipe,
            output,
            d.reasons,
            t0,
            files,
        ))
    }

    /// Parses the file of `state` for ingest stage `id` (from `bytes`, its content, when it
    /// was read to be hashed) and caches the parse; in a run in subject batches the file's
    /// table is then let go of (the batches read it back from the cache).
    fn parse_and_store(
        &self,
        id: usize,
        parser: &FileParser,
        src: &crate::fingerprint::SourceRecipe,
        state: &FileState,
        bytes: Option<Vec<u8>>,
    ) -> anyhow::Result<ParsedFile> {
        let s = &self.plan.stages[id];
        let file = &state.file;
        let failed = |e: DataError| stage_error(&s.name, &s.kind_name, e.into());
        if !self.lean_ingests.load(Ordering::Relaxed) {
            let p = match bytes {
                Some(bytes) => parser.parse_read(file, bytes, state.hash.clone()),
                None => parser.parse(file),
            }
            .map_err(failed)?;
            self.store_file(src, &p, |cache| {
                let mut w = cache
                    .file_table_writer()?
                    .narrowing(parser.cache_narrowing());
                w.write(&p.table)?;
                Ok(w)
            });
            return Ok(p);
        }
        // A run in subject batches: the rows go to the file's cache entry as they are parsed,
        // a piece at a time, and are never held whole.
        let mut writer = self
            .cache
            .file_table_writer()
            .map(|w| w.narrowing(parser.cache_narrowing()));
        let p = parser
            .parse_in_pieces(file, &mut |piece| {
                if let Ok(w) = &mut writer
                    && let Err(e) = w.write(&piece)
                {
                    writer = Err(e);
                }
            })
            .map_err(failed)?;
        self.store_file(src, &p, |_| writer);
        // What the parse freed is of sizes the next file's parse may not ask for again
        // (bench cohort, batches of 100: the run's peak 0.58 -> 0.49 GB, 0.2-0.5 s).
        crate::memory::give_back();
        Ok(p)
    }

    /// Caches the parse `p`, its table written by `table` (a failure is logged: the file is
    /// parsed again when it is needed).
    fn store_file(
        &self,
        src: &crate::fingerprint::SourceRecipe,
        p: &ParsedFile,
        table: impl FnOnce(&Cache) -> anyhow::Result<cache::FileTableWriter>,
    ) {
        let bound = self.judge.bound.clone();
        let key = src.file_key(
            &p.read.site,
            &p.read.file,
            &p.read.hash,
            p.late.then_some(bound.as_str()),
        );
        let latest = p.latest_date.map(|d| d.to_string());
        let stored = table(self.cache).and_then(|w| {
            self.cache
                .store_file_written(&key, w, &p.rejects, &p.read, &bound, latest, p.late)
        });
        if let Err(e) = stored {
            self.log.warn(&format!(
                "could not cache the parse of {}: {e:#}",
                p.read.file
            ));
        }
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
                let lean = self.lean_ingests.load(Ordering::Relaxed);
                if let Some(e) = &st.cached {
                    let loaded = match (lean, e.table_part().ok()) {
                        (true, Some(part)) => self
                            .cache
                            .load_file_rejects(e)
                            .map(|rejects| (DataFrame::empty(), part.rows, rejects)),
                        _ => self.cache.load_file(e).map(|(table, rejects)| {
                            let rows = table.height() as u64;
                            (table, rows, rejects)
                        }),
                    };
                    match loaded {
                        Ok((table, accepted, rejects)) => {
                            return Ok(ParsedFile {
                                table,
                                accepted,
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
                self.parse_and_store(id, parser, src, st, None)
            })
            .collect::<anyhow::Result<_>>()?;
        let accepted: BTreeMap<String, u64> = parts
            .iter()
            .map(|p| (p.read.file.clone(), p.accepted))
            .collect();
        let rows: u64 = accepted.values().sum();
        let lean = self.lean_ingests.load(Ordering::Relaxed);
        let out = ingest::assemble(parts)?;
        let table = if lean {
            DataFrame::empty()
        } else {
            out.table
                .collect()
                .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?
        };
        let mut summary = row_fate::summarize(
            &table,
            out.rejects.as_ref(),
            None,
            true,
            out.files,
            Some(accepted),
        )?;
        if lean {
            // Counted from the files: the table itself was let go of.
            summary.rows = rows;
            summary.has_srcfile = true;
        }
        Ok((
            Frames {
                table,
                rejects: out.rejects,
                dropped: None,
                rows: None,
            },
            summary,
        ))
    }

    /// `columns` of the table of stage `id`: from memory when it is there, else decoded for
    /// those columns only from its cache entry, without keeping them for other readers (a
    /// per-subject date of a reused 8-million-row diary needs two of its columns). Falls back
    /// to the whole table ([`Engine::frames`]) when the entry cannot serve them.
    fn columns_of(&self, id: usize, columns: &[String]) -> anyhow::Result<DataFrame> {
        let slot = self.slot(id)?;
        if slot.released.load(Ordering::Acquire) {
            // Says that the table was asked for after its last reader ran.
            return Ok(self.frames(id)?.table.clone());
        }
        let in_memory = slot.frames.lock().map_err(|_| poisoned())?.clone();
        let whole = match in_memory {
            Some(f) => f.table.clone(),
            None => {
                // (An ingest's entry holds no table: its files' entries make it.)
                let cached = match &slot.entry {
                    Some(e) if e.has_table() => self.cache.load_stage_columns(e, columns).ok(),
                    _ => None,
                };
                match cached {
                    Some(df) => return Ok(df),
                    None => self.frames(id)?.table.clone(),
                }
            }
        };
        // A column the table lacks is left for the stage to name in its message.
        Ok(whole
            .select(columns.iter().map(String::as_str))
            .unwrap_or(whole))
    }

    /// The frames of stage `id`: in memory, else from the cache, else computed again.
    pub(crate) fn frames(&self, id: usize) -> anyhow::Result<Arc<Frames>> {
        let slot = self.slot(id)?;
        if slot.released.load(Ordering::Acquire) {
            return Err(RunError::Internal(format!(
                "the table of `{}` was asked for after its last reader ran",
                self.plan.stages[id].name
            ))
            .into());
        }
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
            (_, Some(e)) if !e.has_table() => {
                // Not cached by design (a kind or `cache: false` that keeps no table, or a
                // stage that ran in subject batches): computed again from its inputs, still a
                // reuse.
                let (frames, _) = self.compute(id, false)?;
                let mut st = slot.state.lock().map_err(|_| poisoned())?;
                st.reasons
                    .push("its table is not cached: computed again from its inputs".into());
                st.seconds += t0.elapsed().as_secs_f64();
                Ok(frames)
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
                let (mut frames, mut summary) = self.compute(id, false)?;
                summary.content = Some(slot.content.clone());
                self.keep(
                    id,
                    &slot.fingerprint,
                    &slot.key,
                    &mut frames,
                    None,
                    &summary,
                )?;
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
    pub(crate) fn part(&self, id: usize, role: &str) -> anyhow::Result<Option<DataFrame>> {
        let slot = self.slot(id)?;
        let pick = |f: &Frames| pick_part(f, role);
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

    /// [`Engine::part`], kept in its cache part's bytes when it is cached: its rows are then
    /// decoded range by range ([`cache::PartRows`]).
    pub(crate) fn part_rows(&self, id: usize, role: &str) -> anyhow::Result<Option<PartRows>> {
        let slot = self.slot(id)?;
        let in_memory = slot.frames.lock().map_err(|_| poisoned())?.is_some();
        if !in_memory
            && !matches!(self.plan.stages[id].kind, Kind::Ingest(_))
            && let Some(e) = &slot.entry
        {
            return match self.cache.stage_part_rows(e, role) {
                Ok(rows) => Ok(rows),
                // Made again from the stage's inputs, as `part` does.
                Err(_) => Ok(pick_part(&*self.frames(id)?, role).map(PartRows::Table)),
            };
        }
        Ok(self.part(id, role)?.map(PartRows::Table))
    }

    fn ingest_rejects(&self, e: &StageEntry) -> Result<Option<DataFrame>, String> {
        let mut parts = Vec::new();
        for k in &e.file_keys {
            let fe = self.cache.usable_file_entry(k)?;
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
}

/// Part `role` (`rejects` or `dropped`) of a stage's output.
fn pick_part(f: &Frames, role: &str) -> Option<DataFrame> {
    match role {
        "rejects" => f.rejects.clone(),
        _ => f.dropped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_table_counts_its_buffers() {
        // Two texts longer than a view holds (in one buffer), one short, one missing; eight
        // bytes per 64-bit integer; a column of one repeated value holds no rows' bytes.
        let long = "a text longer than twelve bytes";
        let table = df!(
            "t" => [Some(long), Some(long), Some("short"), None],
            "n" => [1i64, 2, 3, 4],
        )
        .unwrap();
        let text = table
            .column("t")
            .unwrap()
            .as_materialized_series()
            .str()
            .unwrap()
            .clone();
        let buffers: usize = text.downcast_iter().map(|a| a.total_buffer_len()).sum();
        assert!(buffers >= long.len());
        assert_eq!(held_size(&table), (4 * 16 + buffers + 1 + 4 * 8) as u64);
        let mut with_constant = table.clone();
        with_constant
            .with_column(Column::new_scalar("c".into(), Scalar::from(1i64), 4))
            .unwrap();
        assert_eq!(held_size(&with_constant), held_size(&table));
    }

    #[test]
    fn a_stage_consumes_its_first_input_only_as_its_last_reader() {
        // Readers left of tables 0, 1 and 2.
        let left = |j: usize| [1, 2, 1][j];
        assert!(first_read_last(&[0, 1], left));
        assert!(first_read_last(&[2], left));
        // Another stage still to run reads table 1.
        assert!(!first_read_last(&[1, 0], left));
        // The stage reads table 0 twice: consuming the first would take the second.
        assert!(!first_read_last(&[0, 0], left));
        assert!(!first_read_last(&[], left));
    }

    #[test]
    fn a_large_stage_waits_while_another_runs_and_small_ones_do_not() {
        let large = |id: usize| id.is_multiple_of(2);
        let ready = [4, 1, 2, 7];
        assert_eq!(startable(&ready, 0, large), vec![4, 1, 2, 7]);
        assert_eq!(startable(&ready, 1, large), vec![1, 7]);
        assert_eq!(startable(&[2, 6], 1, large), Vec::<usize>::new());
    }

    #[test]
    fn the_last_reader_of_a_large_table_starts_before_a_longer_chain() {
        // Stages 3 and 5 are ready; 5 heads the longer chain.
        let mut chain = vec![0u64; 6];
        chain[3] = 10;
        chain[5] = 20;
        let ready = [3, 5];
        // Nothing to let go of, or less than a step between them: the chain decides.
        assert_eq!(next_stage(&ready, &chain, |_| 0), Some(1));
        assert_eq!(
            next_stage(&ready, &chain, |id| if id == 3 {
                RELEASE_STEP - 1
            } else {
                0
            }),
            Some(1)
        );
        // Stage 3 is the last reader of a table of a step or more: it goes first.
        assert_eq!(
            next_stage(&ready, &chain, |id| if id == 3 { RELEASE_STEP } else { 0 }),
            Some(0)
        );
        // Both let go of large tables: the larger first, whatever the chains.
        assert_eq!(
            next_stage(&ready, &chain, |id| if id == 3 {
                5 * RELEASE_STEP
            } else {
                2 * RELEASE_STEP
            }),
            Some(0)
        );
        // Equal in both: the first in the plan.
        assert_eq!(next_stage(&ready, &[0; 6], |_| 0), Some(0));
        assert_eq!(next_stage(&[], &chain, |_| 0), None);
    }

    #[test]
    fn concurrently_keeps_item_order_and_reports_the_first_error() {
        let items: Vec<u32> = (0..20).collect();
        let out = concurrently(&items, 3, |&i| Ok(i * 2)).unwrap();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        let err = concurrently(&items, 1, |&i| {
            if i >= 5 {
                anyhow::bail!("item {i}")
            }
            Ok(i)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "item 5");
        assert!(
            concurrently(&Vec::<u32>::new(), 4, |&i| Ok(i))
                .unwrap()
                .is_empty()
        );
    }
}
