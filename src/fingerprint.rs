//! Fingerprints: what a stage's output depends on (its recipe), the hash of it, and in words
//! what changed between two recipes ("parameter `window_days` changed", "new file X").

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::spec::SourceSpec;

/// Everything a stage's output depends on. Its hash is the stage's fingerprint; the manifest
/// keeps it so that the next `plan` can say what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub engine_version: String,
    /// The studyflow executable's GNU build ID (the linker's hash of it) where it has one,
    /// else its blake3: a rebuilt engine (fixed, changed) computes again even when its version
    /// number did not change.
    #[serde(default)]
    pub engine_build: String,
    pub name: String,
    pub kind: String,
    /// blake3 of the parsed parameters.
    pub parameters: String,
    /// The parameters as written, per top-level key; not hashed (`parameters` is), kept to
    /// name the key that changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameter_values: BTreeMap<String, serde_json::Value>,
    /// Input tables with their fingerprints (`None`: not known before the input runs).
    pub inputs: Vec<InputRef>,
    /// The raw files and their reading rules (ingest only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRecipe>,
    /// Reference tables the stage reads, with their content hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ContentRef>,
    /// The run date, for kinds whose output depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_date: Option<String>,
}

/// An input table and its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    pub name: String,
    pub fingerprint: Option<String>,
}

/// A file the stage reads besides its inputs, by content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentRef {
    pub path: String,
    pub hash: String,
}

/// What an ingest stage reads: the source's rules, its sites' dialects, and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecipe {
    pub name: String,
    /// The engine's build (see [`Recipe::engine_build`]): parses of another build are not reused.
    #[serde(default)]
    pub engine_build: String,
    /// blake3 of the source definition (glob, export date rule, columns) and `dates`.
    /// `reject_limit` is left out: it is checked at the end of a run, not while reading.
    pub definition: String,
    /// Site name -> blake3 of its definition (folder, dialect), for the sites of this source.
    pub sites: BTreeMap<String, String>,
    /// Files in reading order.
    pub files: Vec<FileRef>,
}

/// One raw file of an ingest stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the data folder (SRCFILE).
    pub file: String,
    pub site: String,
    /// blake3 of the content.
    pub hash: String,
    /// The upper date bound the file's result names, when some date in it was after that
    /// bound (usually the run date); `None` when the result holds for any later run date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_date: Option<String>,
}

fn hash_text(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

impl Recipe {
    /// The fingerprint: blake3 of the recipe without the display-only parameter values.
    pub fn fingerprint(&self) -> String {
        let mut bare = self.clone();
        bare.parameter_values.clear();
        let json = serde_json::to_string(&bare).unwrap_or_default();
        hash_text(&["studyflow-recipe-1", &json])
    }

    /// The recipe of stage `id`, given its inputs' fingerprints and its parameters as written
    /// (see [`parameter_values`]). Ingest stages get their `source` (without files: see
    /// [`SourceRecipe::files`]); reference files are hashed.
    #[allow(clippy::too_many_arguments)]
    pub fn of_stage(
        plan: &Plan,
        id: usize,
        input_fps: &[Option<String>],
        parameter_values: BTreeMap<String, serde_json::Value>,
        run_date: &str,
        engine_build: &str,
        hash_file: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Recipe {
        let s = &plan.stages[id];
        let base_dir = plan.spec.base_dir();
        let stage = s.kind.stage();
        let references = stage
            .reference_files(&base_dir)
            .into_iter()
            .map(|p| {
                let shown = p
                    .strip_prefix(&base_dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                ContentRef {
                    path: shown,
                    hash: hash_file(&p).unwrap_or_else(|_| "missing".into()),
                }
            })
            .collect();
        let engine_build = engine_build.to_string();
        let source = stage
            .reads_source()
            .and_then(|name| plan.spec.sources.iter().find(|x| x.value.name == name))
            .map(|src| SourceRecipe {
                engine_build: engine_build.clone(),
                ..source_recipe(plan, &src.value)
            });
        Recipe {
            engine_version: crate::ENGINE_VERSION.to_string(),
            engine_build,
            name: s.name.clone(),
            kind: s.kind_name.clone(),
            parameters: hash_text(&[&format!("{:?}", s.kind)]),
            parameter_values,
            inputs: s
                .inputs
                .iter()
                .zip(input_fps)
                .map(|(name, fp)| InputRef {
                    name: name.clone(),
                    fingerprint: fp.clone(),
                })
                .collect(),
            source,
            references,
            run_date: stage.reads_run_date().then(|| run_date.to_string()),
        }
    }

    /// In words, why this recipe differs from `old` (empty when it does not).
    pub fn changes_since(&self, old: &Recipe) -> Vec<String> {
        let mut out = Vec::new();
        if self.engine_version != old.engine_version {
            out.push(format!(
                "engine version changed ({} -> {})",
                old.engine_version, self.engine_version
            ));
        } else if self.engine_build != old.engine_build {
            out.push("engine rebuilt (same version, another executable)".into());
        }
        if self.kind != old.kind {
            out.push(format!("kind changed ({} -> {})", old.kind, self.kind));
        }
        if self.name != old.name {
            out.push("name changed".into());
        }
        if self.parameters != old.parameters {
            let before = out.len();
            let keys: std::collections::BTreeSet<&String> = self
                .parameter_values
                .keys()
                .chain(old.parameter_values.keys())
                .collect();
            for k in keys {
                match (self.parameter_values.get(k), old.parameter_values.get(k)) {
                    (Some(a), Some(b)) if a != b => out.push(format!("parameter `{k}` changed")),
                    (Some(_), None) => out.push(format!("parameter `{k}` added")),
                    (None, Some(_)) => out.push(format!("parameter `{k}` removed")),
                    _ => {}
                }
            }
            if out.len() == before && self.kind == old.kind {
                out.push("parameters changed".into());
            }
        }
        let names = |r: &Recipe| r.inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        if names(self) != names(old) {
            out.push(format!(
                "inputs changed ([{}] -> [{}])",
                names(old).join(", "),
                names(self).join(", ")
            ));
        } else {
            for (a, b) in self.inputs.iter().zip(&old.inputs) {
                if a.fingerprint.is_none() || a.fingerprint != b.fingerprint {
                    out.push(format!("input `{}` changed", a.name));
                }
            }
        }
        match (&self.source, &old.source) {
            (Some(a), Some(b)) => out.extend(a.changes_since(b)),
            (Some(a), None) => out.push(format!("now reads source `{}`", a.name)),
            _ => {}
        }
        for r in &self.references {
            match old.references.iter().find(|o| o.path == r.path) {
                Some(o) if o.hash == r.hash => {}
                Some(_) => out.push(format!("reference file {} changed", r.path)),
                None => out.push(format!("new reference file {}", r.path)),
            }
        }
        if self.run_date != old.run_date {
            out.push(format!(
                "run date changed ({} -> {})",
                old.run_date.as_deref().unwrap_or("-"),
                self.run_date.as_deref().unwrap_or("-")
            ));
        }
        out
    }
}

impl SourceRecipe {
    fn changes_since(&self, old: &SourceRecipe) -> Vec<String> {
        let mut out = Vec::new();
        if self.name != old.name {
            out.push(format!(
                "source changed (`{}` -> `{}`)",
                old.name, self.name
            ));
        } else if self.definition != old.definition {
            out.push(format!("source `{}` definition changed", self.name));
        }
        for (site, h) in &self.sites {
            if old.sites.get(site).is_some_and(|o| o != h) {
                out.push(format!("site `{site}` definition changed"));
            }
        }
        for f in &self.files {
            match old.files.iter().find(|o| o.file == f.file) {
                None => out.push(format!("new file {}", f.file)),
                Some(o) if o.hash != f.hash => out.push(format!("file {} changed", f.file)),
                Some(o) if o.run_date != f.run_date => out.push(format!(
                    "run date changed and file {} has dates after {}",
                    f.file,
                    f.run_date
                        .as_deref()
                        .or(o.run_date.as_deref())
                        .unwrap_or("the run date")
                )),
                Some(_) => {}
            }
        }
        for o in &old.files {
            if !self.files.iter().any(|f| f.file == o.file) {
                out.push(format!("file {} removed", o.file));
            }
        }
        out
    }

    /// The cache key of one parsed file: the reading rules, the file's site, its path (which
    /// becomes SRCFILE) and content, and the run-date bound when its result names one.
    pub fn file_key(&self, site: &str, file: &str, hash: &str, run_date: Option<&str>) -> String {
        hash_text(&[
            "studyflow-file-1",
            crate::ENGINE_VERSION,
            &self.engine_build,
            &self.definition,
            self.sites.get(site).map(String::as_str).unwrap_or(""),
            file,
            hash,
            run_date.unwrap_or("-"),
        ])
    }
}

fn source_recipe(plan: &Plan, src: &SourceSpec) -> SourceRecipe {
    // Hash what the YAML says, not compiled forms (no locations, no hash-map order).
    let mut definition = vec![format!(
        "{:?}{:?}{:?}{:?}",
        src.name, src.files, src.sites, src.export_date
    )];
    definition.extend(src.columns.iter().map(|c| format!("{:?}", c.value)));
    definition.push(format!("{:?}", plan.spec.header.dates));
    let parts: Vec<&str> = definition.iter().map(String::as_str).collect();
    let sites = plan
        .spec
        .sites
        .iter()
        .filter(|s| {
            src.sites
                .as_ref()
                .is_none_or(|only| only.contains(&s.value.name))
        })
        .map(|s| {
            (
                s.value.name.clone(),
                hash_text(&[&format!("{:?}", s.value)]),
            )
        })
        .collect();
    SourceRecipe {
        name: src.name.clone(),
        engine_build: String::new(),
        definition: hash_text(&parts),
        sites,
        files: Vec::new(),
    }
}

/// Every stage's parameters as written, one JSON value per top-level key (common keys left
/// out), by stage name. The YAML is read once for all stages.
pub fn parameter_values(plan: &Plan) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
    let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(&plan.spec.text) else {
        return BTreeMap::new();
    };
    let stages = doc.get("stages").and_then(|s| s.as_array());
    stages
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let map = s.as_object()?;
            let name = map.get("name")?.as_str()?.to_string();
            let params = map
                .iter()
                .filter(|(k, _)| !crate::spec::COMMON_STAGE_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some((name, params))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PipelineSpec;

    const YAML: &str = "pipeline: t\nstages:\n  - name: a\n    kind: sql\n    query: SELECT 1 AS x\n  - name: w\n    kind: phase_windows\n    inputs: [a]\n    constants: {W: 90}\n    phases:\n      - {number: 1, label: Baseline, end: TRTSDT - 1}\n";

    fn recipe(yaml: &str, id: usize, input: Option<&str>) -> Recipe {
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        let plan = crate::plan::build(spec).unwrap();
        let fps: Vec<Option<String>> = plan.stages[id]
            .inputs
            .iter()
            .map(|_| input.map(String::from))
            .collect();
        let values = parameter_values(&plan).remove(&plan.stages[id].name);
        Recipe::of_stage(
            &plan,
            id,
            &fps,
            values.unwrap_or_default(),
            "2026-11-25",
            "build",
            &|_| Ok("h".into()),
        )
    }

    #[test]
    fn a_changed_parameter_is_named_and_changes_the_fingerprint() {
        let old = recipe(YAML, 1, Some("fa"));
        let new = recipe(&YAML.replace("W: 90", "W: 60"), 1, Some("fa"));
        assert_ne!(old.fingerprint(), new.fingerprint());
        assert_eq!(new.changes_since(&old), ["parameter `constants` changed"]);
        // The same YAML gives the same fingerprint.
        assert_eq!(old.fingerprint(), recipe(YAML, 1, Some("fa")).fingerprint());
    }

    #[test]
    fn a_changed_input_is_named() {
        let old = recipe(YAML, 1, Some("fa"));
        let new = recipe(YAML, 1, Some("fb"));
        assert_ne!(old.fingerprint(), new.fingerprint());
        assert_eq!(new.changes_since(&old), ["input `a` changed"]);
    }

    #[test]
    fn files_new_changed_removed_and_run_date() {
        let f = |file: &str, hash: &str, rd: Option<&str>| FileRef {
            file: file.into(),
            site: "nih".into(),
            hash: hash.into(),
            run_date: rd.map(String::from),
        };
        let base = SourceRecipe {
            name: "diary".into(),
            engine_build: "b".into(),
            definition: "d".into(),
            sites: BTreeMap::new(),
            files: vec![f("nih/a.csv", "1", None), f("nih/b.csv", "2", None)],
        };
        let mut now = base.clone();
        now.files = vec![
            f("nih/a.csv", "9", None),
            f("nih/c.csv", "3", None),
            f("nih/d.csv", "4", None),
        ];
        assert_eq!(
            now.changes_since(&base),
            [
                "file nih/a.csv changed",
                "new file nih/c.csv",
                "new file nih/d.csv",
                "file nih/b.csv removed"
            ]
        );
        let mut late = base.clone();
        late.files[1].run_date = Some("2026-11-26".into());
        assert_eq!(
            late.changes_since(&base),
            ["run date changed and file nih/b.csv has dates after 2026-11-26"]
        );
        assert_ne!(
            base.file_key("nih", "nih/a.csv", "1", None),
            base.file_key("nih", "nih/a.csv", "1", Some("2026-11-26"))
        );
    }
}
