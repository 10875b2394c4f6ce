//! `sql`: a polars SQL query over the stage's input tables, the escape hatch for
//! study-specific derivations. Each input is a table named as in `inputs:`.

use polars::prelude::*;
use polars::sql::SQLContext;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `sql` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    /// The query; tables are the stage's inputs by name.
    pub query: String,
    /// Each output row is one row of the first input, kept with its SRCFILE and SRCLINE (a
    /// selection or renaming of columns): row fate then follows the rows through this stage.
    /// Checked at the end of every run: a query that drops or repeats rows makes the row
    /// fate of their files fail to reconcile, and the run fails naming them.
    #[serde(default)]
    pub row_level: bool,
    /// Each output row depends only on rows of one subject (a selection, renaming or union
    /// of rows, or groups that include the subject), so the query may run on a few subjects
    /// at a time (`run --batch-subjects`). studyflow cannot judge a query: the pipeline says.
    #[serde(default)]
    pub subject_local: bool,
}

impl Stage for Sql {
    fn arity(&self) -> Arity {
        Arity::Any
    }

    fn row_level(&self) -> bool {
        self.row_level
    }

    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        (!self.subject_local)
            .then(|| "it is a query the pipeline does not mark `subject_local: true`".into())
    }

    /// An unpublished query's table is not cached: it is mostly a selection or a union of
    /// its inputs, and writing a daily table of millions of rows to the cache cost more than
    /// the query.
    fn cache_table(&self) -> bool {
        false
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        // Parsing needs the input schemas in polars SQL; an empty query is caught here.
        if self.query.trim().is_empty() {
            vec!["`query` is empty".into()]
        } else {
            Vec::new()
        }
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let mut sql = SQLContext::new();
        for (name, table) in &inputs.tables {
            sql.register(name, table.clone().lazy());
        }
        let table = sql
            .execute(&self.query)
            .map_err(|e| anyhow::anyhow!("the SQL query failed: {e}"))?;
        Ok(StageOutput::table(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, ints};

    #[test]
    fn queries_inputs_by_name() {
        let a = df!("s" => ["C1", "C2"], "x" => [1i64, 2]).unwrap();
        let b = df!("s" => ["C1", "C2"], "y" => [10i64, 20]).unwrap();
        let inputs = Inputs {
            tables: vec![("a".into(), a), ("b".into(), b)],
        };
        let stage = Sql {
            query: "SELECT a.s, x + y AS z FROM a JOIN b ON a.s = b.s ORDER BY a.s".into(),
            row_level: false,
            subject_local: false,
        };
        let out = ctx_for(|ctx| stage.run(ctx, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        assert_eq!(ints(&out, "z"), [Some(11), Some(22)]);
        // studyflow cannot judge a query: only the pipeline says it works subject by subject.
        assert!(stage.across_subjects(&["s".into()]).is_some());
        let marked = Sql {
            subject_local: true,
            ..stage
        };
        assert_eq!(marked.across_subjects(&["s".into()]), None);
    }
}
