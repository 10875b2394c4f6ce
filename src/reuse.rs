//! Run or reuse: per stage, whether its cached output can be used, and in words why not.
//! `plan` and `run` share this; `plan` never parses, so it may not know an ingest's fingerprint.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::cache::{Cache, FileEntry, Lookup, StageEntry};
use crate::error::{ConfigErrors, ConfigProblem};
use crate::file_hashes::FileHashes;
use crate::fingerprint::{FileRef, Recipe, SourceRecipe};
use crate::manifest::Manifest;
use crate::plan::{self, Plan};
use crate::source::{ResolvedSource, SourceFile};

/// Stages that run whatever the cache holds: `--force` (all) or `--select` (some).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    forced: HashSet<usize>,
    reason: &'static str,
}

impl Selection {
    /// `--select NAME` is the stage and everything downstream of it; `--select +NAME` adds
    /// everything upstream. `--force` runs every stage.
    pub fn new(plan: &Plan, select: &[String], force: bool) -> Result<Selection, ConfigErrors> {
        if force {
            return Ok(Selection {
                forced: (0..plan.stages.len()).collect(),
                reason: "forced",
            });
        }
        let mut forced = HashSet::new();
        let mut problems = Vec::new();
        for s in select {
            let upstream = s.starts_with('+');
            let name = s.trim_start_matches('+').trim_end_matches('+');
            match plan.stage_id(name) {
                Some(id) => {
                    forced.extend(plan::descendants(plan, id));
                    if upstream {
                        forced.extend(plan::ancestors(plan, id));
                    }
                }
                None => problems.push(ConfigProblem {
                    file: plan.spec.path.clone(),
                    line: 0,
                    column: 0,
                    message: format!("--select: there is no stage `{name}`"),
                    hint: crate::closest(name, plan.stages.iter().map(|s| s.name.as_str()))
                        .map(|c| format!("did you mean `{c}`?")),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(Selection {
            forced,
            reason: "selected",
        })
    }

    /// `Some("forced")` or `Some("selected")` when stage `id` must run.
    pub fn forces(&self, id: usize) -> Option<&'static str> {
        self.forced.contains(&id).then_some(self.reason)
    }
}

/// Run the stage, or reuse its cached output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Reuse,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Reuse => "reuse",
        }
    }
}

/// What to do with one stage, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub action: Action,
    pub reasons: Vec<String>,
    pub recipe: Recipe,
    /// `None` when it cannot be known before running (an ingest with files to parse).
    pub fingerprint: Option<String>,
    /// Where the output is cached: the fingerprint of the recipe with each input named by its
    /// content rather than its fingerprint. An input that ran again and made the very table
    /// it made before keeps its content's name, so this key, and the cached output, stay
    /// (early cutoff); the fingerprint, which the published tables carry, does not depend on
    /// what was cached. Equal to the fingerprint when no input was cut off.
    pub key: Option<String>,
    /// The cached output, when reused.
    pub entry: Option<StageEntry>,
}

/// A raw file of an ingest stage: hashed, with its cached parse when one holds for this run.
#[derive(Debug, Clone)]
pub struct FileState {
    pub file: SourceFile,
    pub hash: String,
    pub cached: Option<FileEntry>,
    /// Why a cached parse that exists was not used.
    pub note: Option<String>,
}

/// A raw file that could not be read to be hashed.
fn unreadable(f: &SourceFile, e: std::io::Error) -> anyhow::Error {
    crate::error::DataError::BadSource(format!("{}: cannot read: {e}", f.path.display())).into()
}

/// What deciding needs: the cache, the last published run, the run date, the selection.
pub struct Judge<'a> {
    pub plan: &'a Plan,
    pub cache: &'a Cache,
    pub hashes: &'a FileHashes,
    pub previous: Option<&'a Manifest>,
    /// The run date, for kinds whose output depends on it.
    pub run_date: String,
    /// The upper date bound ingest checks against (`dates.max`, else the run date).
    pub bound: String,
    pub selection: &'a Selection,
    /// Stage name -> its parameters as written (read once; see [`Judge::recipe`]).
    pub parameter_values: std::sync::OnceLock<ParameterValues>,
    /// The running executable's GNU build ID ([`crate::file_hashes::build_id`]), or where it
    /// has none its blake3 (hashed once, or known by its stamp).
    pub engine_build: std::sync::OnceLock<String>,
}

/// Stage name -> its parameters as written, per top-level key.
pub type ParameterValues =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>;

impl Judge<'_> {
    /// The recipe of stage `id` without its files.
    pub fn recipe(&self, id: usize, input_fps: &[Option<String>]) -> Recipe {
        let hash = |p: &std::path::Path| self.hashes.hash(p).map(|(_, h)| h);
        let values = self
            .parameter_values
            .get_or_init(|| crate::fingerprint::parameter_values(self.plan))
            .get(&self.plan.stages[id].name)
            .cloned()
            .unwrap_or_default();
        // The executable's build ID where the linker wrote one, else its hash.
        let build = self.engine_build.get_or_init(|| {
            std::env::current_exe()
                .and_then(|exe| match crate::file_hashes::build_id(&exe) {
                    Some(id) => Ok(format!("gnu-build-id:{id}")),
                    None => self.hashes.hash_executable(&exe).map(|(_, h)| h),
                })
                .unwrap_or_else(|_| "unknown".into())
        });
        Recipe::of_stage(
            self.plan,
            id,
            input_fps,
            values,
            &self.run_date,
            build,
            &hash,
        )
    }

    /// Hashes the files of an ingest stage and finds their cached parses.
    pub fn files(
        &self,
        id: usize,
        source: &ResolvedSource,
        recipe: &SourceRecipe,
    ) -> anyhow::Result<Vec<FileState>> {
        source
            .files
            .par_iter()
            .map(|f| {
                let (_, hash) = self.hashes.hash(&f.path).map_err(|e| unreadable(f, e))?;
                Ok(self.file_state(id, f, recipe, hash))
            })
            .collect()
    }

    /// [`Judge::files`] for one file, and its bytes when it had to be read to be hashed and
    /// has no cached parse: the caller parses those bytes rather than reading the file again.
    pub fn file_keeping(
        &self,
        id: usize,
        f: &SourceFile,
        recipe: &SourceRecipe,
    ) -> anyhow::Result<(FileState, Option<Vec<u8>>)> {
        let (_, hash, bytes) = self
            .hashes
            .hash_keeping(&f.path)
            .map_err(|e| unreadable(f, e))?;
        let state = self.file_state(id, f, recipe, hash);
        let bytes = bytes.filter(|_| state.cached.is_none());
        Ok((state, bytes))
    }

    /// A file of an ingest stage of blake3 `hash`, with its cached parse if there is one.
    fn file_state(
        &self,
        id: usize,
        f: &SourceFile,
        recipe: &SourceRecipe,
        hash: String,
    ) -> FileState {
        let mut state = FileState {
            file: f.clone(),
            hash,
            cached: None,
            note: None,
        };
        if self.selection.forces(id).is_some() {
            return state;
        }
        let free = recipe.file_key(&f.site, &f.rel, &state.hash, None);
        let late = recipe.file_key(&f.site, &f.rel, &state.hash, Some(&self.bound));
        for key in [free, late] {
            match self.cache.file_entry(&key) {
                Lookup::Found(e) if e.holds_for(&self.bound) => {
                    state.cached = Some(e);
                    break;
                }
                Lookup::Found(e) => {
                    state.note = Some(format!(
                        "run date changed and file {} has dates after {}",
                        f.rel,
                        if e.late { &e.bound } else { &self.bound }
                    ))
                }
                Lookup::Missing => {}
                Lookup::Corrupt(why) => {
                    state.note = Some(format!("cached parse of file {} unusable ({why})", f.rel))
                }
            }
        }
        if state.cached.is_some() {
            state.note = None;
        }
        state
    }

    /// The file's part of the recipe, if known: from its fresh parse, else its cached one.
    pub fn file_ref(
        &self,
        state: &FileState,
        parsed_late: Option<(bool, &str)>,
    ) -> Option<FileRef> {
        let (late, hash) = match (parsed_late, &state.cached) {
            (Some((late, hash)), _) => (late, hash.to_string()),
            (None, Some(e)) => (e.late, state.hash.clone()),
            (None, None) => return None,
        };
        Some(FileRef {
            file: state.file.rel.clone(),
            site: state.file.site.clone(),
            hash,
            run_date: late.then(|| self.bound.clone()),
        })
    }

    /// Decides stage `id` from its recipe. `complete` is false when some file's part of the
    /// recipe is unknown (not parsed yet); `notes` are extra reasons (unusable cached files);
    /// `contents` names each input's content (see [`Decision::key`]).
    pub fn decide(
        &self,
        id: usize,
        recipe: Recipe,
        complete: bool,
        notes: Vec<String>,
        contents: &[Option<String>],
    ) -> Decision {
        let name = &self.plan.stages[id].name;
        let fingerprint = (complete && recipe.inputs.iter().all(|i| i.fingerprint.is_some()))
            .then(|| recipe.fingerprint());
        let key = fingerprint.as_ref().and_then(|fp| {
            let mut keyed = recipe.clone();
            for (input, content) in keyed.inputs.iter_mut().zip(contents) {
                input.fingerprint = Some(content.clone()?);
            }
            Some(if keyed.inputs == recipe.inputs {
                fp.clone()
            } else {
                keyed.fingerprint()
            })
        });
        let before = self.previous.and_then(|m| m.stage(name));
        let changes = || -> Vec<String> {
            match (
                self.previous,
                before,
                before.and_then(|b| b.recipe.as_ref()),
            ) {
                (None, _, _) => vec!["no earlier run".into()],
                (Some(_), None, _) => vec!["new stage".into()],
                (Some(_), Some(_), None) => vec!["the earlier run recorded no recipe".into()],
                (Some(_), Some(_), Some(old)) => recipe.changes_since(old),
            }
        };
        let run = |reasons: Vec<String>, entry: Option<StageEntry>| Decision {
            action: Action::Run,
            reasons,
            recipe: recipe.clone(),
            fingerprint: fingerprint.clone(),
            key: key.clone(),
            entry,
        };
        if let Some(why) = self.selection.forces(id) {
            return run(vec![why.to_string()], None);
        }
        let (Some(fp), Some(k)) = (&fingerprint, &key) else {
            let mut reasons = changes();
            reasons.extend(notes);
            if reasons.is_empty() {
                reasons.push("cached parse of some files missing".into());
            }
            return run(reasons, None);
        };
        match self.cache.stage_entry(k) {
            Lookup::Found(e) => {
                let reason = if before.is_some_and(|b| &b.fingerprint == fp) {
                    "up to date".to_string()
                } else if before.is_some_and(|b| b.key() == k) {
                    let rerun: Vec<String> = recipe
                        .inputs
                        .iter()
                        .zip(contents)
                        .filter(|(i, c)| i.fingerprint != **c)
                        .map(|(i, _)| format!("`{}`", i.name))
                        .collect();
                    if rerun.is_empty() {
                        "up to date".to_string()
                    } else {
                        format!(
                            "up to date: the tables of inputs {} are unchanged",
                            rerun.join(", ")
                        )
                    }
                } else {
                    "same recipe as a cached earlier run".to_string()
                };
                Decision {
                    action: Action::Reuse,
                    reasons: vec![reason],
                    recipe,
                    fingerprint,
                    key,
                    entry: Some(e),
                }
            }
            Lookup::Missing => {
                let mut reasons = changes();
                if reasons.is_empty() {
                    reasons.push("cached output missing".into());
                }
                run(reasons, None)
            }
            Lookup::Corrupt(why) => {
                let mut reasons = changes();
                reasons.push(format!("cached output unusable ({why})"));
                run(reasons, None)
            }
        }
    }
}

/// One stage as `plan` shows it.
#[derive(Debug, Clone)]
pub struct PlanLine {
    pub stage: usize,
    pub decision: Decision,
    /// Ingest: files to parse, of how many.
    pub files: Option<(usize, usize)>,
}

/// What a run would do, stage by stage, without reading data beyond file hashes.
pub fn preview(judge: &Judge, sources: &[ResolvedSource]) -> anyhow::Result<Vec<PlanLine>> {
    let plan = judge.plan;
    let mut fps: Vec<Option<String>> = vec![None; plan.stages.len()];
    // What the stages reading each stage see of its output: known when it is reused. A stage
    // that runs may make the same table again, which `plan` cannot know; the run checks.
    let mut contents: Vec<Option<String>> = vec![None; plan.stages.len()];
    let mut out = Vec::new();
    for (id, s) in plan.stages.iter().enumerate() {
        let input_fps: Vec<Option<String>> = s.input_ids.iter().map(|&j| fps[j].clone()).collect();
        let input_contents: Vec<Option<String>> =
            s.input_ids.iter().map(|&j| contents[j].clone()).collect();
        let mut recipe = judge.recipe(id, &input_fps);
        let mut complete = true;
        let mut notes = Vec::new();
        let mut files = None;
        if let (Some(src), Some(name)) = (recipe.source.as_mut(), s.kind.stage().reads_source()) {
            let source = sources
                .iter()
                .find(|x| x.name == name)
                .ok_or_else(|| anyhow::anyhow!("source `{name}` is not resolved"))?;
            let states = judge.files(id, source, src)?;
            let mut to_parse = 0;
            for st in &states {
                match judge.file_ref(st, None) {
                    Some(r) => src.files.push(r),
                    None => {
                        complete = false;
                        to_parse += 1;
                        // Known by hash only: enough to say new or changed.
                        src.files.push(FileRef {
                            file: st.file.rel.clone(),
                            site: st.file.site.clone(),
                            hash: st.hash.clone(),
                            run_date: None,
                        });
                    }
                }
                notes.extend(st.note.clone());
            }
            files = Some((to_parse, states.len()));
        }
        let decision = judge.decide(id, recipe, complete, notes, &input_contents);
        fps[id] = decision.fingerprint.clone();
        contents[id] = match (&decision.entry, decision.action) {
            (Some(e), Action::Reuse) => e.summary.content.clone().or(decision.key.clone()),
            _ => None,
        };
        out.push(PlanLine {
            stage: id,
            decision,
            files,
        });
    }
    Ok(out)
}

/// `plan`: what a run with these options would do.
#[derive(Debug)]
pub struct Preview {
    pub lines: Vec<PlanLine>,
    /// The run compared with (the one `current` points at).
    pub previous_run: Option<String>,
    pub cache_dir: std::path::PathBuf,
}

/// What a run with `opts` would do, stage by stage, without running anything.
pub fn preview_run(plan: &Plan, opts: &crate::run::RunOptions) -> anyhow::Result<Preview> {
    let data_dir = plan.data_dir(opts.data_dir.as_ref());
    let out_dir = plan.out_dir(opts.out_dir.as_ref());
    let run_date = opts.run_date();
    let selection = Selection::new(plan, &opts.select, opts.force)?;
    let sources = crate::run::resolve_sources(plan, &data_dir)?;
    let previous = crate::run::previous_manifest(&out_dir);
    let cache = Cache::new(&out_dir);
    let hashes = FileHashes::load(cache.dir(), !opts.force);
    let judge = Judge {
        plan,
        cache: &cache,
        hashes: &hashes,
        previous: previous.as_ref().map(|(_, m)| m),
        run_date: run_date.to_string(),
        bound: crate::stages::ingest::date_window(&plan.spec, run_date)
            .1
            .to_string(),
        selection: &selection,
        parameter_values: Default::default(),
        engine_build: Default::default(),
    };
    let lines = preview(&judge, &sources)?;
    Ok(Preview {
        lines,
        previous_run: previous.map(|(_, m)| m.run_id),
        cache_dir: cache.dir().to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PipelineSpec;
    use std::path::Path;

    fn plan() -> Plan {
        // a -> b -> c, and d on its own.
        let yaml = "pipeline: t\nstages:\n  - {name: a, kind: sql, query: SELECT 1 AS x}\n  - {name: b, kind: sql, inputs: [a], query: SELECT 1 AS x}\n  - {name: c, kind: sql, inputs: [b], query: SELECT 1 AS x}\n  - {name: d, kind: sql, query: SELECT 1 AS x}\n";
        crate::plan::build(PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap()).unwrap()
    }

    fn forced(p: &Plan, s: &Selection) -> Vec<String> {
        let mut names: Vec<String> = (0..p.stages.len())
            .filter(|&i| s.forces(i).is_some())
            .map(|i| p.stages[i].name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn select_is_downstream_plus_adds_upstream_force_is_everything() {
        let p = plan();
        let s = Selection::new(&p, &["b".into()], false).unwrap();
        assert_eq!(forced(&p, &s), ["b", "c"]);
        assert_eq!(s.forces(p.stage_id("b").unwrap()), Some("selected"));
        let s = Selection::new(&p, &["+b".into()], false).unwrap();
        assert_eq!(forced(&p, &s), ["a", "b", "c"]);
        let s = Selection::new(&p, &[], true).unwrap();
        assert_eq!(forced(&p, &s), ["a", "b", "c", "d"]);
        assert_eq!(s.forces(0), Some("forced"));
        assert!(forced(&p, &Selection::new(&p, &[], false).unwrap()).is_empty());
        let err = Selection::new(&p, &["bb".into()], false).unwrap_err();
        assert!(err.to_string().contains("did you mean `b`?"), "{err}");
    }
}
