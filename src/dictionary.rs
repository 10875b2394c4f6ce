//! The data dictionary written next to the published tables: every output column with its
//! label, type, unit and the stage that derives it, as JSON and Markdown.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::Schema;
use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::plan::Plan;
use crate::spec::ColumnLabel;

/// One column of one published table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub table: String,
    pub column: String,
    pub label: String,
    #[serde(rename = "type")]
    pub dtype: String,
    pub unit: Option<String>,
    /// The stage that produces the table, and how.
    pub derivation: String,
}

/// Labels and units of the columns studyflow and CDISC ADaM name the same way everywhere.
fn standard(column: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match column {
        "USUBJID" => ("Unique Subject Identifier", None),
        "SITE" | "SITEID" => ("Study Site", None),
        "SRCFILE" => ("Source export file (relative to the data folder)", None),
        "SRCLINE" => (
            "Physical line of the source file where the record starts",
            None,
        ),
        "EXPORTDT" => ("Export date of the source file", None),
        "SOURCE" => ("Source (data stream)", None),
        "STAGE" => ("Stage that rejected the row", None),
        "COLUMN" => ("Column that failed", None),
        "RAWVALUE" => ("Raw value as written in the export", None),
        "RULE" => ("Rule the row failed", None),
        "REASON" => ("Why the row was rejected", None),
        "FATE" => ("Fate of the row (collapsed or superseded)", None),
        "KEPTFILE" => ("File of the row kept instead", None),
        "KEPTLINE" => ("Line of the row kept instead", None),
        "PARAMCD" => ("Parameter Code", None),
        "PARAM" => ("Parameter", None),
        "AVAL" => ("Analysis Value", Some("see AVALU")),
        "AVALU" => ("Analysis Value Unit", None),
        "ADT" => ("Analysis Date", None),
        "ADY" => (
            "Analysis Relative Day (day 1 = first dose, no day 0)",
            Some("days"),
        ),
        "APHASEN" => ("Analysis Phase (N)", None),
        "APHASE" => ("Analysis Phase", None),
        "ASTDT" => ("Phase Start Date", None),
        "AENDT" => ("Phase End Date", None),
        "ADURN" => ("Phase Duration", Some("days")),
        "ABLFL" => ("Baseline Record Flag", None),
        "BASE" => ("Baseline Value", Some("see AVALU")),
        "CHG" => ("Change from Baseline", Some("see AVALU")),
        "TRTSDT" => ("Date of First Exposure to Treatment", None),
        "OPTSDT" => ("Start Date of the Optimal Regimen", None),
        "LSTVSTDT" => ("Date of Final Visit", None),
        "FRSTDT" => ("First Observed Date (any stream)", None),
        "ORIGVAL" => ("Value as written in the export", None),
        "ORIGU" => ("Unit as written in the export", None),
        "CENSOR" => ("Censoring of the value (< or >)", None),
        "N" => ("Number of non-missing values", None),
        "MEAN" => ("Mean", Some("parameter unit")),
        "SD" => ("Standard deviation (n - 1)", Some("parameter unit")),
        "MEDIAN" => ("Median", Some("parameter unit")),
        "Q1" => (
            "First quartile (linear interpolation)",
            Some("parameter unit"),
        ),
        "Q3" => (
            "Third quartile (linear interpolation)",
            Some("parameter unit"),
        ),
        "MIN" => ("Minimum", Some("parameter unit")),
        "MAX" => ("Maximum", Some("parameter unit")),
        "READ" => ("Rows read from the file", None),
        "ACCEPTED" => ("Rows accepted", None),
        "REJECTED" => ("Rows rejected", None),
        "COLLAPSED" => ("Identical duplicate rows collapsed", None),
        "SUPERSEDED" => ("Rows superseded by a newer export", None),
        "TABLE" => ("Table the accepted rows end in", None),
        _ => return None,
    })
}

/// Tables studyflow writes itself, and what they are.
const ENGINE_TABLES: &[(&str, &str)] = &[
    (
        "rejects",
        "every rejected raw row, with file, line, column, raw value, rule and reason",
    ),
    (
        "duplicates",
        "rows collapsed as identical duplicates or superseded by a newer export",
    ),
    (
        "row_fate",
        "per input file: rows read = accepted + rejected + collapsed + superseded",
    ),
];

/// Builds the dictionary of the published tables (name and schema, in publishing order).
pub fn build(plan: &Plan, tables: &[(String, Schema)]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (table, schema) in tables {
        let stage = plan.stages.iter().find(|s| &s.name == table);
        let labels: BTreeMap<String, ColumnLabel> = stage
            .and_then(|s| {
                plan.spec
                    .stages
                    .iter()
                    .find(|e| e.common.name.value == s.name)
            })
            .map(|e| e.common.labels.clone())
            .unwrap_or_default();
        let derivation = match stage {
            Some(s) => {
                let from = match s.kind.stage().reads_source() {
                    Some(src) => format!("source `{src}`"),
                    None => s
                        .inputs
                        .iter()
                        .map(|i| format!("`{i}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let mut d = format!("stage `{}` ({}) from {from}", s.name, s.kind_name);
                if let Some(desc) = &s.description {
                    d.push_str(": ");
                    d.push_str(desc.trim());
                }
                d
            }
            None => ENGINE_TABLES
                .iter()
                .find(|(n, _)| n == table)
                .map(|(_, d)| format!("written by studyflow: {d}"))
                .unwrap_or_else(|| "written by studyflow".into()),
        };
        for (column, dtype) in schema.iter() {
            let (label, unit) = match labels.get(column.as_str()) {
                Some(l) => (l.label().to_string(), l.unit().map(str::to_string)),
                None => match standard(column) {
                    Some((l, u)) => (l.to_string(), u.map(str::to_string)),
                    None => (column.replace('_', " "), None),
                },
            };
            out.push(Entry {
                table: table.clone(),
                column: column.to_string(),
                label,
                dtype: dtype.to_string(),
                unit,
                derivation: derivation.clone(),
            });
        }
    }
    out
}

/// The dictionary as Markdown, one section per table.
pub fn markdown(entries: &[Entry]) -> String {
    let mut s = String::from("# Data dictionary\n");
    let mut current = "";
    for e in entries {
        if e.table != current {
            current = &e.table;
            s.push_str(&format!(
                "\n## {}\n\n{}\n\n| column | label | type | unit |\n|---|---|---|---|\n",
                e.table, e.derivation
            ));
        }
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            e.column,
            e.label.replace('|', "/"),
            e.dtype,
            e.unit.as_deref().unwrap_or("")
        ));
    }
    s
}

/// The schema of a published Parquet file, from its footer.
pub fn schema_of(path: &Path) -> anyhow::Result<Schema> {
    use polars::prelude::{ParquetReader, SchemaExt, SerReader};
    let file = std::fs::File::open(path)?;
    let arrow = ParquetReader::new(file).schema()?;
    Ok(Schema::from_arrow_schema(&arrow))
}

/// Writes `dictionary.json` and `dictionary.md` into `dir`.
pub fn write(dir: &Path, entries: &[Entry]) -> Result<(), RunError> {
    let json = serde_json::to_vec_pretty(entries).map_err(|e| RunError::Internal(e.to_string()))?;
    crate::publish::write_atomic(&dir.join("dictionary.json"), &json)?;
    crate::publish::write_atomic(&dir.join("dictionary.md"), markdown(entries).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;
    use std::path::Path as StdPath;

    #[test]
    fn columns_get_stage_labels_then_standard_labels() {
        let yaml = "pipeline: t\nstages:\n  - name: steroid_daily\n    kind: sql\n    query: SELECT 1\n    description: daily dose\n    labels:\n      PREDMGKG: {label: Prednisone-equivalent dose per kg, unit: mg/kg/day}\n      NOTE: Free text\n";
        let spec = crate::spec::PipelineSpec::parse(StdPath::new("p.yaml"), yaml.into()).unwrap();
        let plan = crate::plan::build(spec).unwrap();
        let schema = Schema::from_iter([
            Field::new("USUBJID".into(), DataType::String),
            Field::new("PREDMGKG".into(), DataType::Float64),
            Field::new("NOTE".into(), DataType::String),
            Field::new("other_col".into(), DataType::Int64),
        ]);
        let d = build(&plan, &[("steroid_daily".into(), schema)]);
        assert_eq!(d[0].label, "Unique Subject Identifier");
        assert_eq!(
            (d[1].label.as_str(), d[1].unit.as_deref()),
            ("Prednisone-equivalent dose per kg", Some("mg/kg/day"))
        );
        assert_eq!(d[2].label, "Free text");
        assert_eq!(d[3].label, "other col");
        assert!(
            d[0].derivation.contains("stage `steroid_daily` (sql)")
                && d[0].derivation.contains("daily dose")
        );
        assert!(
            markdown(&d)
                .contains("| PREDMGKG | Prednisone-equivalent dose per kg | f64 | mg/kg/day |")
        );
    }
}
