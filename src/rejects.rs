//! The rejects table: one row per raw row a stage refused, with where it came from and why.
//! Also the schema of rows set aside as duplicates (collapsed or superseded).

use polars::prelude::*;

/// Columns a stage fills in its rejects (the engine adds STAGE and SOURCE).
pub const REJECT_COLUMNS: &[&str] = &[
    "SRCFILE", "SRCLINE", "SITE", "COLUMN", "RAWVALUE", "RULE", "REASON",
];

/// Builds a rejects frame row by row.
#[derive(Debug, Default)]
pub struct RejectsBuilder {
    file: Vec<String>,
    line: Vec<i64>,
    site: Vec<String>,
    column: Vec<String>,
    raw: Vec<String>,
    rule: Vec<String>,
    reason: Vec<String>,
}

impl RejectsBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        file: &str,
        line: i64,
        site: &str,
        column: &str,
        raw: &str,
        rule: &str,
        reason: String,
    ) {
        self.file.push(file.to_string());
        self.line.push(line);
        self.site.push(site.to_string());
        self.column.push(column.to_string());
        self.raw.push(raw.to_string());
        self.rule.push(rule.to_string());
        self.reason.push(reason);
    }

    /// Moves every row of `other` to the end of `self`.
    pub fn append(&mut self, mut other: RejectsBuilder) {
        self.file.append(&mut other.file);
        self.line.append(&mut other.line);
        self.site.append(&mut other.site);
        self.column.append(&mut other.column);
        self.raw.append(&mut other.raw);
        self.rule.append(&mut other.rule);
        self.reason.append(&mut other.reason);
    }

    pub fn len(&self) -> usize {
        self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }

    pub fn finish(self) -> PolarsResult<DataFrame> {
        DataFrame::new_infer_height(vec![
            Column::new("SRCFILE".into(), self.file),
            Column::new("SRCLINE".into(), self.line),
            Column::new("SITE".into(), self.site),
            Column::new("COLUMN".into(), self.column),
            Column::new("RAWVALUE".into(), self.raw),
            Column::new("RULE".into(), self.rule),
            Column::new("REASON".into(), self.reason),
        ])
    }
}

/// An empty rejects frame.
pub fn empty() -> PolarsResult<DataFrame> {
    RejectsBuilder::default().finish()
}

/// Rows of `table` where `failed` holds become rejects: `column`, `raw` (an expression giving
/// the value as text), `rule` and `reason` (an expression giving the sentence).
pub fn from_filter(
    table: LazyFrame,
    failed: Expr,
    column: &str,
    raw: Expr,
    rule: &str,
    reason: Expr,
) -> LazyFrame {
    table.filter(failed).select([
        col("SRCFILE"),
        col("SRCLINE"),
        col("SITE"),
        lit(column.to_string()).alias("COLUMN"),
        raw.cast(DataType::String).alias("RAWVALUE"),
        lit(rule.to_string()).alias("RULE"),
        reason.cast(DataType::String).alias("REASON"),
    ])
}

/// Columns of the set-aside rows: which raw row, its fate, and the row that was kept instead.
pub const DROPPED_COLUMNS: &[&str] =
    &["SRCFILE", "SRCLINE", "SITE", "FATE", "KEPTFILE", "KEPTLINE"];
