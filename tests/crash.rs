//! Crash consistency (issue 8, `make crashtest`): the reference pipeline on the shipped sample
//! is aborted at every failpoint and killed with SIGKILL at random moments; after each crash
//! the published run must be the last good one, complete and matching its manifest, and the
//! next run must succeed, noticing the dead run's lock.
//!
//! `STUDYFLOW_CRASH_ITERATIONS` (default 50) sets the number of crashes, `STUDYFLOW_CRASH_SEED`
//! replays a sequence of kill moments.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polars::prelude::*;
use rand::{Rng, SeedableRng};

/// What `out/current` held at one moment: its target and the blake3 of each file.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    target: PathBuf,
    files: BTreeMap<String, String>,
}

/// How one iteration ended the run.
#[derive(Debug, Clone)]
enum Crash {
    /// `STUDYFLOW_FAILPOINT=<name>` with `STUDYFLOW_FAILPOINT_ACTION=abort`.
    Failpoint(String),
    /// SIGKILL after this long.
    Kill(Duration),
}

#[derive(Debug, Default)]
struct Tally {
    iterations: usize,
    failpoint_aborts: usize,
    killed_mid_run: usize,
    finished_before_kill: usize,
    published_before_death: usize,
    recoveries: usize,
    stale_locks_noticed: usize,
    failures: Vec<String>,
}

struct Harness {
    bin: PathBuf,
    pipeline: PathBuf,
    out: PathBuf,
    /// blake3 of every published table of a good run: every later good run must match.
    tables: BTreeMap<String, String>,
    last_good: Option<Snapshot>,
    full_run: Duration,
    reported: std::collections::BTreeSet<String>,
}

fn hash(path: &Path) -> std::io::Result<String> {
    Ok(blake3::hash(&std::fs::read(path)?).to_hex().to_string())
}

impl Harness {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("run")
            .arg(&self.pipeline)
            .arg("--out")
            .arg(&self.out)
            .args(["--run-date", "2026-11-25"])
            .current_dir(&self.out)
            .env_remove("STUDYFLOW_FAILPOINT")
            .env_remove("STUDYFLOW_FAILPOINT_ACTION");
        // SAFETY: setrlimit is async-signal-safe; no core files from the aborts.
        unsafe {
            c.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        c
    }

    /// A run to completion; returns its stderr.
    fn full_run(&self) -> Result<String, String> {
        let o = self.command().output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success() {
            Ok(err)
        } else {
            Err(format!("exit {:?}: {err}", o.status))
        }
    }

    fn current(&self) -> Result<Option<Snapshot>, String> {
        let link = self.out.join("current");
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading the link `current`: {e}")),
        };
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&link).map_err(|e| format!("listing current: {e}"))? {
            let p = e.map_err(|e| e.to_string())?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, hash(&p).map_err(|e| format!("{}: {e}", p.display()))?);
        }
        Ok(Some(Snapshot { target, files }))
    }

    /// Every published file is complete: it is listed in the manifest with its hash and size,
    /// its rows read back, and its bytes are those of every other good run.
    fn check_complete(&self, snap: &Snapshot) -> Vec<String> {
        let mut problems = Vec::new();
        let dir = self.out.join("current");
        let name = snap.target.to_string_lossy();
        if !name.starts_with("runs/") || name.ends_with(".partial") || name.ends_with(".failed") {
            problems.push(format!("`current` points at {name}, not a finished run"));
        }
        let manifest: serde_json::Value = match std::fs::read(dir.join("manifest.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => return vec![format!("{}: manifest.json: {e}", snap.target.display())],
        };
        let mut listed = vec!["manifest.json".to_string()];
        for d in manifest["documents"].as_array().into_iter().flatten() {
            let file = d["file"].as_str().unwrap_or_default().to_string();
            match snap.files.get(&file) {
                None => problems.push(format!("{file} is in the manifest but not published")),
                Some(h) if d["blake3"].as_str() != Some(h.as_str()) => {
                    problems.push(format!("{file}: hash differs from the manifest"))
                }
                Some(_) => {}
            }
            listed.push(file);
        }
        for t in manifest["tables"].as_array().into_iter().flatten() {
            let file = t["file"].as_str().unwrap_or_default().to_string();
            listed.push(file.clone());
            let path = dir.join(&file);
            match snap.files.get(&file) {
                None => problems.push(format!("{file} is in the manifest but not published")),
                Some(h) if t["blake3"].as_str() != Some(h.as_str()) => {
                    problems.push(format!("{file}: hash differs from the manifest"))
                }
                Some(_) => {}
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if t["bytes"].as_u64() != Some(size) {
                problems.push(format!(
                    "{file}: {size} bytes, manifest says {}",
                    t["bytes"]
                ));
            }
            let rows = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| ParquetReader::new(f).finish().map_err(|e| e.to_string()))
                .map(|df| df.height() as u64);
            match rows {
                Ok(n) if t["rows"].as_u64() == Some(n) => {}
                Ok(n) => problems.push(format!("{file}: {n} rows, manifest says {}", t["rows"])),
                Err(e) => problems.push(format!("{file} does not read back: {e}")),
            }
            if let Some(want) = self.tables.get(&file)
                && snap.files.get(&file) != Some(want)
            {
                problems.push(format!("{file}: bytes differ from the first good run"));
            }
        }
        for name in snap.files.keys() {
            if !listed.contains(name) {
                problems.push(format!(
                    "{name} is published but not in the manifest (a temporary file?)"
                ));
            }
        }
        problems
    }

    /// Unfinished run folders and temporary files left in the output folder.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.out).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Temporary names start with a dot; other folders (a cache) may come and go.
            let temporary = name.starts_with('.') && name != ".lock";
            if temporary || name.contains(".tmp") || name.ends_with(".partial") {
                out.push(name);
            }
        }
        for e in std::fs::read_dir(self.out.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") || name.contains(".tmp") {
                out.push(format!("runs/{name}"));
            }
        }
        out
    }

    fn lock_holder(&self) -> String {
        std::fs::read_to_string(self.out.join(".lock"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// One crash, the checks after it, and the run that must recover.
    fn iteration(&mut self, crash: &Crash, tally: &mut Tally) -> Vec<String> {
        let mut problems = Vec::new();
        let mut c = self.command();
        c.stdout(Stdio::null()).stderr(Stdio::null());
        if let Crash::Failpoint(name) = crash {
            c.env("STUDYFLOW_FAILPOINT", name)
                .env("STUDYFLOW_FAILPOINT_ACTION", "abort");
        }
        let mut child = match c.spawn() {
            Ok(c) => c,
            Err(e) => return vec![format!("cannot start studyflow: {e}")],
        };
        let mut crashed = true;
        match crash {
            Crash::Failpoint(name) => match child.wait() {
                Ok(s) if s.signal() == Some(libc::SIGABRT) => tally.failpoint_aborts += 1,
                Ok(s) => {
                    crashed = false;
                    problems.push(format!("failpoint {name} not reached: the run ended {s}"));
                }
                Err(e) => problems.push(format!("waiting for the run: {e}")),
            },
            Crash::Kill(after) => {
                std::thread::sleep(*after);
                match child.try_wait() {
                    Ok(Some(s)) => {
                        crashed = false;
                        tally.finished_before_kill += 1;
                        if !s.success() {
                            problems.push(format!("an undisturbed run failed: {s}"));
                        }
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        tally.killed_mid_run += 1;
                    }
                }
            }
        }

        match self.current() {
            Err(e) => problems.push(e),
            Ok(None) if self.last_good.is_some() => problems.push("`current` disappeared".into()),
            Ok(None) => {}
            Ok(Some(snap)) => {
                let same = self.last_good.as_ref() == Some(&snap);
                if !same {
                    if crashed {
                        // Killed after the switch: the run was published before it died.
                        tally.published_before_death += 1;
                    }
                    if self.last_good.as_ref().map(|g| &g.target) == Some(&snap.target) {
                        problems.push("the published run's files changed".into());
                    }
                }
                problems.extend(self.check_complete(&snap));
                self.last_good = Some(snap);
            }
        }
        if !crashed {
            return problems;
        }

        let holder = self.lock_holder();
        tally.recoveries += 1;
        match self.full_run() {
            Err(e) => problems.push(format!("the run after the crash failed: {e}")),
            Ok(err) => {
                let noticed = err.contains("did not finish");
                if noticed {
                    tally.stale_locks_noticed += 1;
                }
                if !holder.is_empty() && !noticed {
                    problems.push(format!(
                        "the dead run's lock ({holder}) went unnoticed: {err}"
                    ));
                }
                match self.current() {
                    Ok(Some(snap)) => {
                        if self.last_good.as_ref().map(|g| &g.target) == Some(&snap.target) {
                            problems.push("the run after the crash did not publish".into());
                        }
                        problems.extend(self.check_complete(&snap));
                        self.last_good = Some(snap);
                    }
                    Ok(None) => problems.push("nothing published after recovery".into()),
                    Err(e) => problems.push(e),
                }
                // A leftover is reported once, not again in every later iteration.
                for l in self.leftovers() {
                    if self.reported.insert(l.clone()) {
                        problems.push(format!("left over after recovery: {l}"));
                    }
                }
            }
        }
        problems
    }
}

/// Every failpoint of the reference pipeline: each stage, each table write, the manifest
/// and the publish switch.
fn failpoints(pipeline: &Path) -> Vec<String> {
    let plan = studyflow::cli::load_plan(pipeline).unwrap();
    let mut out: Vec<String> = plan
        .stages
        .iter()
        .map(|s| format!("stage:{}", s.name))
        .collect();
    for s in plan.stages.iter().filter(|s| s.publish) {
        out.push(format!("write:{}", s.name));
    }
    for t in studyflow::plan::RESERVED_TABLES {
        out.push(format!("write:{t}"));
    }
    out.push("manifest".into());
    out.push("publish".into());
    out
}

/// The binary under test, pinned for the whole test: the build folder is shared by every
/// clone on the machine (README), and another clone's build replaces `debug/studyflow`.
pub fn pinned_binary(dir: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_studyflow"));
    let pinned = dir.join("studyflow");
    if std::fs::hard_link(built, &pinned).is_err() {
        std::fs::copy(built, &pinned).unwrap();
    }
    pinned
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
fn crashes_never_corrupt_or_half_publish_the_output() {
    let iterations = env_number("STUDYFLOW_CRASH_ITERATIONS", 50) as usize;
    let seed = env_number("STUDYFLOW_CRASH_SEED", rand::rng().random());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline = root.join("pipelines/reference.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness {
        bin: pinned_binary(tmp.path()),
        pipeline: pipeline.clone(),
        out: tmp.path().join("out"),
        tables: BTreeMap::new(),
        last_good: None,
        full_run: Duration::ZERO,
        reported: Default::default(),
    };
    std::fs::create_dir_all(&h.out).unwrap();

    // Two good runs: the first sets the bytes every good run must have, both time a run.
    let started = Instant::now();
    for _ in 0..2 {
        let t0 = Instant::now();
        h.full_run().unwrap();
        h.full_run = h.full_run.max(t0.elapsed());
        let snap = h.current().unwrap().unwrap();
        if h.tables.is_empty() {
            h.tables = snap
                .files
                .iter()
                .filter(|(n, _)| n.ends_with(".parquet"))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
        }
        let problems = h.check_complete(&snap);
        assert!(problems.is_empty(), "a good run: {problems:?}");
        h.last_good = Some(snap);
    }

    let points = failpoints(&pipeline);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let window = h.full_run.as_micros() as u64 * 11 / 10;
    for i in 0..iterations {
        let crash = match points.get(i) {
            Some(p) => Crash::Failpoint(p.clone()),
            None => Crash::Kill(Duration::from_micros(rng.random_range(0..=window))),
        };
        tally.iterations += 1;
        for p in h.iteration(&crash, &mut tally) {
            tally
                .failures
                .push(format!("iteration {i} ({crash:?}): {p}"));
        }
    }

    println!(
        "crashtest: {} iterations in {:.0} s (seed {seed}, a full run takes {:.2} s)\n  \
         {} aborted at a failpoint ({} failpoints), {} killed mid-run, {} finished before \
         the kill, {} published just before dying\n  {} recovery runs, {} noticed a dead \
         run's lock\n  failures: {}",
        tally.iterations,
        started.elapsed().as_secs_f64(),
        h.full_run.as_secs_f64(),
        tally.failpoint_aborts,
        points.len(),
        tally.killed_mid_run,
        tally.finished_before_kill,
        tally.published_before_death,
        tally.recoveries,
        tally.stale_locks_noticed,
        tally.failures.len()
    );
    for f in &tally.failures {
        println!("  FAIL {f}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} failures (seed {seed}): {:#?}",
        tally.failures.len(),
        tally.failures
    );
}

#[test]
fn regression_a_kill_before_the_switch_left_a_current_link_behind() {
    // Found by `make crashtest`: a run killed between making its new `current` link and
    // renaming it over `current` left `out/.current.tmp-<pid>` for good.
    let w = crate::workdir::Workdir::from_fixture("two_sites");
    crate::workdir::assert_exit(&w.run_pipeline(), 0);
    let stale = w.path("out/.current.tmp-4242");
    std::os::unix::fs::symlink("runs/nowhere", &stale).unwrap();
    crate::workdir::assert_exit(&w.run_pipeline(), 0);
    assert!(
        std::fs::symlink_metadata(&stale).is_err(),
        "the stale link is swept"
    );
    assert!(w.path("out/current/manifest.json").is_file());
}
