//! The plan: the spec checked (names unique, inputs exist, no cycles, parameters valid) and
//! ordered. Every problem is collected with its file, line and column; no data is read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::dialect::Dialect;
use crate::error::{ConfigErrors, ConfigProblem};
use crate::source::ResolvedSite;
use crate::spec::{PipelineSpec, StageEntry};
use crate::stages::{Arity, Kind};

/// Table names the engine writes itself.
pub const RESERVED_TABLES: &[&str] = &["rejects", "duplicates", "row_fate"];

/// A checked stage.
#[derive(Debug)]
pub struct PlannedStage {
    pub name: String,
    pub kind_name: String,
    pub kind: Kind,
    /// Input table names, as written.
    pub inputs: Vec<String>,
    /// Indexes of the input stages in `Plan::stages`.
    pub input_ids: Vec<usize>,
    pub publish: bool,
    /// `cache:` as written (see [`crate::spec::StageCommon::cache`]).
    pub cache: bool,
    pub sort_by: Vec<String>,
    pub description: Option<String>,
    pub line: u64,
}

/// A checked, ordered pipeline.
#[derive(Debug)]
pub struct Plan {
    pub spec: PipelineSpec,
    pub sites: Vec<ResolvedSite>,
    /// Stages in a topological order (inputs before the stages that read them).
    pub stages: Vec<PlannedStage>,
    /// Stages grouped in waves: every stage of a wave depends only on earlier waves.
    pub waves: Vec<Vec<usize>>,
    /// blake3 of the pipeline file.
    pub pipeline_hash: String,
}

impl Plan {
    /// Index of the stage named `name`.
    pub fn stage_id(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The stages stage `id` reads, each once, in order of their ids.
    pub fn distinct_inputs(&self, id: usize) -> Vec<usize> {
        let mut v = self.stages[id].input_ids.clone();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Stages that read stage `id`.
    pub fn consumers(&self, id: usize) -> Vec<usize> {
        (0..self.stages.len())
            .filter(|&j| self.stages[j].input_ids.contains(&id))
            .collect()
    }

    /// Folder of the raw exports: `--data`, else the YAML's `data_dir`, else `data/`.
    pub fn data_dir(&self, overridden: Option<&PathBuf>) -> PathBuf {
        match overridden {
            Some(p) => p.clone(),
            None => self
                .spec
                .base_dir()
                .join(self.spec.header.data_dir.as_deref().unwrap_or("data")),
        }
    }

    /// Output folder: `--out`, else the YAML's `out_dir`, else `out/`.
    pub fn out_dir(&self, overridden: Option<&PathBuf>) -> PathBuf {
        match overridden {
            Some(p) => p.clone(),
            None => self
                .spec
                .base_dir()
                .join(self.spec.header.out_dir.as_deref().unwrap_or("out")),
        }
    }
}

struct Problems<'a> {
    spec: &'a PipelineSpec,
    list: Vec<ConfigProblem>,
}

impl Problems<'_> {
    fn at(&mut self, line: u64, column: u64, message: String, hint: Option<String>) {
        self.list.push(ConfigProblem {
            file: self.spec.path.clone(),
            line,
            column,
            message,
            hint,
        });
    }
}

/// Checks and orders a spec.
pub fn build(spec: PipelineSpec) -> Result<Plan, ConfigErrors> {
    let mut p = Problems {
        spec: &spec,
        list: spec.problems.clone(),
    };
    if chrono::NaiveDate::parse_from_str(&spec.header.dates.min, "%Y-%m-%d").is_err() {
        p.at(
            1,
            1,
            format!(
                "dates.min `{}` is not a date (YYYY-MM-DD)",
                spec.header.dates.min
            ),
            None,
        );
    }
    if let Some(max) = &spec.header.dates.max
        && chrono::NaiveDate::parse_from_str(max, "%Y-%m-%d").is_err()
    {
        p.at(
            1,
            1,
            format!("dates.max `{max}` is not a date (YYYY-MM-DD)"),
            None,
        );
    }

    // Sites and their dialects.
    let mut sites = Vec::new();
    let mut site_names = HashSet::new();
    for s in &spec.sites {
        let (line, col) = (s.referenced.line(), s.referenced.column());
        if !site_names.insert(s.value.name.clone()) {
            p.at(
                line,
                col,
                format!("site `{}` is defined twice", s.value.name),
                None,
            );
        }
        match Dialect::compile(&s.value.dialect) {
            Ok(d) => sites.push(ResolvedSite {
                name: s.value.name.clone(),
                folder: s
                    .value
                    .folder
                    .clone()
                    .unwrap_or_else(|| s.value.name.clone()),
                dialect: Arc::new(d),
            }),
            Err(errs) => {
                for e in errs {
                    p.at(line, col, format!("site `{}`: {e}", s.value.name), None);
                }
            }
        }
    }

    // Sources.
    let mut source_names = HashSet::new();
    for s in &spec.sources {
        let (line, col) = (s.referenced.line(), s.referenced.column());
        let src = &s.value;
        if !source_names.insert(src.name.clone()) {
            p.at(
                line,
                col,
                format!("source `{}` is defined twice", src.name),
                None,
            );
        }
        if let Some(only) = &src.sites {
            for site in only {
                if !site_names.contains(site) {
                    let hint = crate::closest(site, site_names.iter().map(String::as_str))
                        .map(|c| format!("did you mean `{c}`?"));
                    p.at(
                        line,
                        col,
                        format!("source `{}` names unknown site `{site}`", src.name),
                        hint,
                    );
                }
            }
        }
        if !(0.0..=1.0).contains(&src.reject_limit) {
            p.at(
                line,
                col,
                format!(
                    "source `{}`: reject_limit must be between 0 and 1",
                    src.name
                ),
                None,
            );
        }
        if let Some(r) = &src.export_date
            && let Err(e) = crate::source::ExportDateRule::compile(&r.pattern, &r.format)
        {
            p.at(line, col, format!("source `{}`: {e}", src.name), None);
        }
        for (l, c, msg) in crate::stages::ingest::check_columns(&src.columns) {
            p.at(l, c, format!("source `{}`: {msg}", src.name), None);
        }
        if src.columns.is_empty() {
            p.at(
                line,
                col,
                format!("source `{}` lists no columns", src.name),
                None,
            );
        }
    }
    if spec.sites.is_empty() && !spec.sources.is_empty() {
        p.at(
            1,
            1,
            "sources are defined but no sites".into(),
            Some("add a `sites:` list with each site's folder and dialect".into()),
        );
    }

    // Stages: names, kinds, parameters.
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds: Vec<Option<Kind>> = Vec::new();
    for (i, e) in spec.stages.iter().enumerate() {
        let name = &e.common.name;
        let (line, col) = (name.referenced.line(), name.referenced.column());
        if RESERVED_TABLES.contains(&name.value.as_str()) {
            p.at(
                line,
                col,
                format!(
                    "stage name `{}` is reserved for a table studyflow writes itself",
                    name.value
                ),
                None,
            );
        }
        if by_name.insert(name.value.clone(), i).is_some() {
            p.at(
                line,
                col,
                format!("stage `{}` is defined twice", name.value),
                Some("stage names are table names and must be unique".into()),
            );
        }
        match Kind::parse(&spec, e.index, &e.common.kind.value) {
            Ok(k) => {
                for msg in k.stage().check(&spec) {
                    p.at(
                        e.line,
                        e.column,
                        format!("stage `{}`: {msg}", name.value),
                        None,
                    );
                }
                kinds.push(Some(k));
            }
            Err(problem) => {
                p.list.push(problem);
                kinds.push(None);
            }
        }
    }

    // Inputs and arity.
    let mut input_ids: Vec<Vec<usize>> = Vec::new();
    for (i, e) in spec.stages.iter().enumerate() {
        let mut ids = Vec::new();
        for input in &e.common.inputs {
            match by_name.get(&input.value) {
                Some(&j) => ids.push(j),
                None => {
                    let hint = crate::closest(&input.value, by_name.keys().map(String::as_str))
                        .map(|c| format!("did you mean `{c}`?"))
                        .or_else(|| {
                            Some("inputs name other stages (a stage's name is its table)".into())
                        });
                    p.at(
                        input.referenced.line(),
                        input.referenced.column(),
                        format!(
                            "stage `{}` reads unknown input `{}`",
                            e.common.name.value, input.value
                        ),
                        hint,
                    );
                }
            }
        }
        if let Some(k) = &kinds[i] {
            check_arity(&mut p, e, k.stage().arity());
        }
        if e.common.publish && !e.common.cache {
            p.at(
                e.line,
                1,
                format!(
                    "stage `{}` is published and says `cache: false`",
                    e.common.name.value
                ),
                Some("a published table is always kept in the cache (a link to the published file): drop `cache: false`".into()),
            );
        }
        input_ids.push(ids);
    }

    let order = match topo_order(&input_ids) {
        Ok(o) => o,
        Err(cycle) => {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| spec.stages[i].common.name.value.as_str())
                .collect();
            let first = &spec.stages[cycle[0]];
            p.at(
                first.line,
                first.column,
                format!("the stages form a cycle: {}", path.join(" -> ")),
                Some("a stage cannot read, directly or indirectly, its own output".into()),
            );
            Vec::new()
        }
    };

    if !p.list.is_empty() {
        return Err(ConfigErrors(p.list));
    }

    // Renumber stages in topological order.
    let mut new_id = vec![0usize; order.len()];
    for (new, &old) in order.iter().enumerate() {
        new_id[old] = new;
    }
    let mut kinds: Vec<Option<Kind>> = kinds;
    let mut stages = Vec::with_capacity(order.len());
    for &old in &order {
        let e = &spec.stages[old];
        let Some(kind) = kinds[old].take() else {
            return Err(ConfigErrors(vec![]));
        };
        stages.push(PlannedStage {
            name: e.common.name.value.clone(),
            kind_name: e.common.kind.value.clone(),
            kind,
            inputs: e.common.inputs.iter().map(|i| i.value.clone()).collect(),
            input_ids: input_ids[old].iter().map(|&j| new_id[j]).collect(),
            publish: e.common.publish,
            cache: e.common.cache,
            sort_by: e.common.sort_by.clone(),
            description: e.common.description.clone(),
            line: e.line,
        });
    }
    let mut depth = vec![0usize; stages.len()];
    for i in 0..stages.len() {
        depth[i] = stages[i]
            .input_ids
            .iter()
            .map(|&j| depth[j] + 1)
            .max()
            .unwrap_or(0);
    }
    let max_depth = depth.iter().copied().max().unwrap_or(0);
    let mut waves = vec![Vec::new(); max_depth + 1];
    for (i, d) in depth.iter().enumerate() {
        waves[*d].push(i);
    }
    let pipeline_hash = blake3::hash(spec.text.as_bytes()).to_hex().to_string();
    Ok(Plan {
        spec,
        sites,
        stages,
        waves,
        pipeline_hash,
    })
}

fn check_arity(p: &mut Problems, e: &StageEntry, arity: Arity) {
    let n = e.common.inputs.len();
    let ok = match arity {
        Arity::None => n == 0,
        Arity::One => n == 1,
        Arity::AtLeastOne => n >= 1,
        Arity::Any => true,
        Arity::Exactly(k) => n == k,
    };
    if !ok {
        let want = match arity {
            Arity::None => "no inputs".to_string(),
            Arity::One => "exactly one input".to_string(),
            Arity::AtLeastOne => "at least one input".to_string(),
            Arity::Any => "any inputs".to_string(),
            Arity::Exactly(k) => format!("exactly {k} inputs"),
        };
        p.at(
            e.line,
            e.column,
            format!(
                "stage `{}` of kind `{}` takes {want}, but has {n}",
                e.common.name.value, e.common.kind.value
            ),
            None,
        );
    }
}

/// A topological order (stable: file order where free), or a cycle as a path of stage indexes.
fn topo_order(inputs: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = inputs.len();
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        inputs: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(i);
                return Err(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &j in &inputs[i] {
            visit(j, inputs, state, order, stack)?;
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..n {
        visit(i, inputs, &mut state, &mut order, &mut stack)?;
    }
    Ok(order)
}

/// Stage `id` and every stage downstream of it.
pub fn descendants(plan: &Plan, id: usize) -> HashSet<usize> {
    let mut out = HashSet::from([id]);
    for (j, s) in plan.stages.iter().enumerate() {
        if s.input_ids.iter().any(|i| out.contains(i)) {
            out.insert(j);
        }
    }
    out
}

/// Stage `id` and every stage upstream of it.
pub fn ancestors(plan: &Plan, id: usize) -> HashSet<usize> {
    let mut out = HashSet::from([id]);
    for j in (0..plan.stages.len()).rev() {
        if out.contains(&j) {
            out.extend(plan.stages[j].input_ids.iter().copied());
        }
    }
    out
}

/// Input name -> stage ids map, for messages.
pub fn names(plan: &Plan) -> HashMap<&str, usize> {
    plan.stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan(yaml: &str) -> Result<Plan, ConfigErrors> {
        build(PipelineSpec::parse(Path::new("p.yaml"), yaml.to_string())?)
    }

    #[test]
    fn an_unknown_kind_after_a_broken_stage_is_located_at_its_own_line() {
        // The first stage fails to parse, so the second is the first in `spec.stages`.
        let err = plan("pipeline: t\nstages:\n  - {name: a, kind: sql, inputs: 3}\n  - {name: b, kind: sqll}\n")
            .unwrap_err();
        let unknown: Vec<_> = err
            .0
            .iter()
            .filter(|p| p.message.contains("unknown stage kind"))
            .collect();
        assert_eq!(unknown.len(), 1, "{err}");
        assert_eq!(unknown[0].line, 4, "{err}");
    }

    #[test]
    fn cache_false_is_read_and_refused_on_a_published_stage() {
        let p = plan("pipeline: t\nstages:\n  - {name: a, kind: sql, query: SELECT 1, cache: false}\n  - {name: b, kind: sql, query: SELECT 1}\n").unwrap();
        assert_eq!(
            p.stages.iter().map(|s| s.cache).collect::<Vec<_>>(),
            [false, true]
        );
        let err = plan("pipeline: t\nstages:\n  - {name: a, kind: sql, query: SELECT 1, publish: true, cache: false}\n").unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.line == 3 && p.message.contains("published and says `cache: false`")),
            "{err}"
        );
    }

    #[test]
    fn orders_stages_from_their_inputs() {
        let p = plan("pipeline: t\nstages:\n  - {name: c, kind: sql, inputs: [b], query: SELECT 1}\n  - {name: a, kind: sql, query: SELECT 1}\n  - {name: b, kind: sql, inputs: [a], query: SELECT 1}\n").unwrap();
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(p.waves.len(), 3);
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let yaml = "pipeline: t\nstages:\n  - name: a\n    kind: sql\n    inputs: [c]\n    query: SELECT 1\n  - name: a\n    kind: sqll\n  - name: c\n    kind: sql\n    inputs: [a, nope]\n    query: SELECT 1\n";
        let err = plan(yaml).unwrap_err();
        let msgs: Vec<String> = err
            .0
            .iter()
            .map(|p| format!("{}:{}", p.line, p.message))
            .collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("7:") && m.contains("defined twice")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("8:") && m.contains("unknown stage kind `sqll`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("11:") && m.contains("unknown input `nope`")),
            "{msgs:?}"
        );
    }

    #[test]
    fn cycles_are_shown_as_a_path() {
        let yaml = "pipeline: t\nstages:\n  - {name: a, kind: sql, inputs: [c], query: SELECT 1}\n  - {name: b, kind: sql, inputs: [a], query: SELECT 1}\n  - {name: c, kind: sql, inputs: [b], query: SELECT 1}\n";
        let err = plan(yaml).unwrap_err();
        assert!(err.to_string().contains("a -> c -> b -> a"), "{err}");
    }
}
