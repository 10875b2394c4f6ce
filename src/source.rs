//! Sources resolved against the data folder: which files each source reads, from which site,
//! in which dialect, and in which export order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use regex::Regex;

use crate::dialect::Dialect;
use crate::error::DataError;
use crate::spec::SourceSpec;

/// A source with its files found on disk.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    pub name: String,
    pub spec: SourceSpec,
    /// Files sorted by export date, then by path.
    pub files: Vec<SourceFile>,
}

/// One raw export file of a source.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub site: String,
    pub path: PathBuf,
    /// Path relative to the data folder, with `/` separators (the SRCFILE of its rows).
    pub rel: String,
    pub export_date: NaiveDate,
    pub dialect: Arc<Dialect>,
}

/// A site with its compiled dialect.
#[derive(Debug, Clone)]
pub struct ResolvedSite {
    pub name: String,
    pub folder: String,
    pub dialect: Arc<Dialect>,
}

/// Reads the export date from a file name.
#[derive(Debug, Clone)]
pub struct ExportDateRule {
    pattern: Regex,
    format: String,
}

impl ExportDateRule {
    /// The default: an ISO date (`2017-06-30`) or a compact one (`20170630`) in the name.
    pub fn default_rules() -> Vec<ExportDateRule> {
        vec![
            ExportDateRule {
                pattern: Regex::new(r"(\d{4}-\d{2}-\d{2})").expect("static regex"),
                format: "%Y-%m-%d".into(),
            },
            ExportDateRule {
                pattern: Regex::new(r"(\d{8})").expect("static regex"),
                format: "%Y%m%d".into(),
            },
        ]
    }

    pub fn compile(pattern: &str, format: &str) -> Result<ExportDateRule, String> {
        let pattern = Regex::new(pattern)
            .map_err(|e| format!("export_date pattern `{pattern}` is not a valid regex: {e}"))?;
        if pattern.captures_len() < 2 {
            return Err("export_date pattern needs one capture group around the date".into());
        }
        Ok(ExportDateRule {
            pattern,
            format: format.to_string(),
        })
    }

    fn apply(&self, name: &str) -> Option<NaiveDate> {
        let caps = self.pattern.captures(name)?;
        NaiveDate::parse_from_str(caps.get(1)?.as_str(), &self.format).ok()
    }
}

/// Finds the files of one source under `data_dir`, one glob per site folder.
pub fn resolve_source(
    spec: &SourceSpec,
    sites: &[ResolvedSite],
    data_dir: &Path,
) -> Result<ResolvedSource, DataError> {
    let rules = match &spec.export_date {
        Some(r) => {
            vec![ExportDateRule::compile(&r.pattern, &r.format).map_err(DataError::BadSource)?]
        }
        None => ExportDateRule::default_rules(),
    };
    let mut files = Vec::new();
    for site in sites {
        if let Some(only) = &spec.sites
            && !only.iter().any(|s| s == &site.name)
        {
            continue;
        }
        let folder = data_dir.join(&site.folder);
        let pattern = folder.join(&spec.files);
        let pattern = pattern.to_string_lossy();
        let entries = glob::glob(&pattern).map_err(|e| {
            DataError::BadSource(format!(
                "source `{}`: bad file glob `{pattern}`: {e}",
                spec.name
            ))
        })?;
        for entry in entries {
            let path = entry.map_err(|e| {
                DataError::BadSource(format!(
                    "source `{}`: cannot list {}: {e}",
                    spec.name,
                    e.path().display()
                ))
            })?;
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(m) if m.is_dir() => continue,
                // Skipping what cannot be opened (a symlink loop, a dangling link) would
                // lose its rows without a word.
                Ok(_) => {
                    return Err(DataError::BadSource(format!(
                        "source `{}`: {} matches `{}` but is not a regular file",
                        spec.name,
                        path.display(),
                        spec.files
                    )));
                }
                Err(e) => {
                    return Err(DataError::BadSource(format!(
                        "source `{}`: {} matches `{}` but cannot be opened: {e}",
                        spec.name,
                        path.display(),
                        spec.files
                    )));
                }
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let export_date = rules.iter().find_map(|r| r.apply(&name)).ok_or_else(|| {
                DataError::BadSource(format!(
                    "source `{}`: cannot read the export date from the file name {} \
                     (expected a date like 2017-06-30 in the name, or configure `export_date`)",
                    spec.name,
                    path.display()
                ))
            })?;
            let rel = path
                .strip_prefix(data_dir)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push(SourceFile {
                site: site.name.clone(),
                path,
                rel,
                export_date,
                dialect: site.dialect.clone(),
            });
        }
    }
    if files.is_empty() {
        return Err(DataError::BadSource(format!(
            "source `{}` matched no file: looked for `{}` in the site folders under {}",
            spec.name,
            spec.files,
            data_dir.display()
        )));
    }
    // Through a symbolic link (a loop, say) one file can match twice; its rows would count twice.
    let mut seen = std::collections::HashMap::new();
    for f in &files {
        let real = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
        if let Some(first) = seen.insert(real, &f.rel) {
            return Err(DataError::BadSource(format!(
                "source `{}`: {first} and {} are the same file, reached twice through a \
                 symbolic link (a link loop in the input folder?)",
                spec.name, f.rel
            )));
        }
    }
    files.sort_by(|a, b| (a.export_date, &a.rel).cmp(&(b.export_date, &b.rel)));
    Ok(ResolvedSource {
        name: spec.name.clone(),
        spec: spec.clone(),
        files,
    })
}
