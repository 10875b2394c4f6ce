//! The stage kinds: one trait, and the one list of kinds (`Kind`) with their YAML names.
//! Adding a kind touches its own file and this list, nothing else.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use polars::prelude::*;

use crate::error::ConfigProblem;
use crate::source::ResolvedSource;
use crate::spec::PipelineSpec;

pub mod dedupe;
pub mod ingest;
pub mod sql;
pub mod steroid_equivalent;
pub mod validate;

/// What a stage sees of the run besides its input tables.
pub struct StageCtx<'a> {
    /// The stage's name (= its output table).
    pub name: &'a str,
    pub spec: &'a PipelineSpec,
    /// The date of the run; later dates are implausible.
    pub run_date: NaiveDate,
    /// Folder of the raw exports.
    pub data_dir: &'a Path,
    /// Folder of the pipeline YAML; relative paths in parameters start here.
    pub base_dir: &'a Path,
    /// Every source of the pipeline, resolved.
    pub sources: &'a [ResolvedSource],
}

impl StageCtx<'_> {
    /// Resolves a path written in the YAML against the YAML's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        self.base_dir.join(p)
    }
}

/// The input tables of a stage, in the order of its `inputs:`.
pub struct Inputs {
    pub tables: Vec<(String, DataFrame)>,
}

impl Inputs {
    /// The table named `name`.
    pub fn get(&self, name: &str) -> Option<&DataFrame> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    /// The first input (for one-input kinds; the plan checks the count).
    pub fn first(&self) -> &DataFrame {
        &self.tables[0].1
    }
}

/// What a stage produces: its table, and rows it rejected or set aside.
pub struct StageOutput {
    pub table: LazyFrame,
    /// Rejected rows, in the schema of [`crate::rejects`].
    pub rejects: Option<DataFrame>,
    /// Rows collapsed or superseded, in the schema of [`crate::rejects::dropped_schema`].
    pub dropped: Option<DataFrame>,
}

impl StageOutput {
    pub fn table(table: LazyFrame) -> Self {
        StageOutput {
            table,
            rejects: None,
            dropped: None,
        }
    }
}

/// How many inputs a kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    None,
    One,
    AtLeastOne,
    Exactly(usize),
}

/// A stage kind. `run` returns the output table; it must not read files the plan did not name.
pub trait Stage: Send + Sync + Debug {
    /// Inputs this kind takes.
    fn arity(&self) -> Arity {
        Arity::One
    }
    /// True when every output row is one input row that survived (it keeps SRCFILE/SRCLINE),
    /// so row fate can be followed through it.
    fn row_level(&self) -> bool {
        false
    }
    /// Checks the parameters without reading data; returns messages of what is wrong.
    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        Vec::new()
    }
    /// Names of sources this stage reads (ingest only).
    fn reads_source(&self) -> Option<&str> {
        None
    }
    /// Extra files (reference tables) whose content is part of this stage's fingerprint.
    fn reference_files(&self, _base_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Builds the output table.
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput>;
}

/// The list of stage kinds. The YAML `kind:` is the snake_case of the variant.
#[derive(Debug)]
pub enum Kind {
    Ingest(ingest::Ingest),
    Validate(validate::Validate),
    Dedupe(dedupe::Dedupe),
    Sql(sql::Sql),
    SteroidEquivalent(steroid_equivalent::SteroidEquivalent),
}

/// YAML names of every kind, for messages.
pub const KIND_NAMES: &[&str] = &["ingest", "validate", "dedupe", "sql", "steroid_equivalent"];

impl Kind {
    /// Parses stage `index` of `spec` as the kind named `kind`.
    pub fn parse(spec: &PipelineSpec, index: usize, kind: &str) -> Result<Kind, ConfigProblem> {
        Ok(match kind {
            "ingest" => Kind::Ingest(spec.stage_params(index)?),
            "validate" => Kind::Validate(spec.stage_params(index)?),
            "dedupe" => Kind::Dedupe(spec.stage_params(index)?),
            "sql" => Kind::Sql(spec.stage_params(index)?),
            "steroid_equivalent" => Kind::SteroidEquivalent(spec.stage_params(index)?),
            other => {
                let entry = &spec.stages[index];
                let closest = crate::closest(other, KIND_NAMES.iter().copied());
                return Err(ConfigProblem {
                    file: spec.path.clone(),
                    line: entry.common.kind.referenced.line(),
                    column: entry.common.kind.referenced.column(),
                    message: format!("unknown stage kind `{other}`"),
                    hint: Some(match closest {
                        Some(c) => format!("did you mean `{c}`? kinds: {}", KIND_NAMES.join(", ")),
                        None => format!("kinds: {}", KIND_NAMES.join(", ")),
                    }),
                });
            }
        })
    }

    /// The kind as a trait object.
    pub fn stage(&self) -> &dyn Stage {
        match self {
            Kind::Ingest(s) => s,
            Kind::Validate(s) => s,
            Kind::Dedupe(s) => s,
            Kind::Sql(s) => s,
            Kind::SteroidEquivalent(s) => s,
        }
    }
}
