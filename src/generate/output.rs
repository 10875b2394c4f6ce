//! Writing a generated cohort: each subject's records rendered into parts, placed at their
//! lines, appended to the site files, and the truth tables (clean rows, defects, anchors).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use rayon::prelude::*;

use super::dialect::{self, Dialect, Slot, site_folder};
use super::dirt::{Fate, OutRow};
use super::render::{
    Scratch, clean_record, encode, header_line, push_field, push_uint, raw_record, write_date,
};
use super::{Stream, StreamCounts, Study, vocabulary};

/// A subject's treatment anchors, from the rows that survive cleaning.
#[derive(Debug, Clone, Default)]
pub(super) struct Anchors {
    pub first_dose: Option<NaiveDate>,
    pub optimal: Option<NaiveDate>,
    pub final_visit: Option<NaiveDate>,
}

/// One record of a part and what must become of it.
struct RecordMeta {
    /// Physical lines the record spans.
    lines: u64,
    fate: RecordFate,
}

enum RecordFate {
    /// Accepted; its canonical text is the next `clean_len` bytes of [`Part::clean`].
    Accepted {
        clean_len: usize,
    },
    Defect(Box<Defect>),
}

struct Defect {
    column: &'static str,
    fate: &'static str,
    rule: &'static str,
    step: &'static str,
    value: String,
}

/// One subject's records of one export file: rendered and encoded, then (once the line where
/// they start is known) its truth lines.
#[derive(Default)]
pub(super) struct Part {
    raw: Vec<u8>,
    clean: String,
    records: Vec<RecordMeta>,
    lines: u64,
    /// Clean-table lines with SRCFILE and SRCLINE.
    truth: Vec<u8>,
    /// Defect lines.
    defects: Vec<u8>,
    counts: StreamCounts,
}

pub(super) struct SubjectOutput {
    pub index: usize,
    /// Per stream, the first and the second export.
    pub parts: Vec<[Part; 2]>,
    pub anchors: Anchors,
}

pub(super) fn render_part(
    scratch: &mut Scratch,
    stream: Stream,
    dialect: &Dialect,
    slots: &[(usize, Slot)],
    rows: Vec<OutRow>,
) -> Part {
    let mut part = Part::default();
    for row in rows {
        raw_record(scratch, dialect, stream, slots, &row.cells, row.extra_field);
        encode(dialect, &scratch.line, &mut part.raw);
        let lines = scratch.line.bytes().filter(|b| *b == b'\n').count() as u64;
        part.lines += lines;
        let defect = |column: &'static str,
                      fate: &'static str,
                      rule: &'static str,
                      step: &'static str,
                      value: String| {
            RecordFate::Defect(Box::new(Defect {
                column,
                fate,
                rule,
                step,
                value,
            }))
        };
        let fate = match row.fate {
            Fate::Accepted => {
                let before = part.clean.len();
                clean_record(&mut part.clean, scratch, stream, &row.cells);
                RecordFate::Accepted {
                    clean_len: part.clean.len() - before,
                }
            }
            Fate::Collapsed => defect("", "collapsed", "", "dedupe", String::new()),
            Fate::Superseded => defect("", "superseded", "", "dedupe", String::new()),
            Fate::Rejected { rule, step, column } => match column {
                Some(c) => defect(
                    stream.columns()[c].name,
                    "rejected",
                    rule,
                    step,
                    scratch.fields[c].clone(),
                ),
                None => defect("", "rejected", rule, step, String::new()),
            },
        };
        part.records.push(RecordMeta { lines, fate });
    }
    part
}

impl Part {
    /// Renders the truth lines of a part whose first record starts at physical line `start`
    /// of file `rel`.
    fn finalize(&mut self, stream: Stream, rel: &str, start: u64) {
        let mut line = start;
        let mut clean_at = 0;
        let mut text = String::new();
        let mut truth = String::new();
        let mut defects = String::new();
        for rec in &self.records {
            self.counts.rows += 1;
            match &rec.fate {
                RecordFate::Accepted { clean_len } => {
                    self.counts.accepted += 1;
                    truth.push_str(&self.clean[clean_at..clean_at + clean_len]);
                    truth.push(',');
                    truth.push_str(rel);
                    truth.push(',');
                    push_uint(&mut truth, line, 1);
                    truth.push('\n');
                    clean_at += clean_len;
                }
                RecordFate::Defect(d) => {
                    match d.fate {
                        "collapsed" => self.counts.collapsed += 1,
                        "superseded" => self.counts.superseded += 1,
                        _ => self.counts.rejected += 1,
                    }
                    text.clear();
                    push_uint(&mut text, line, 1);
                    let fields = [
                        rel,
                        &text,
                        stream.name(),
                        d.column,
                        d.fate,
                        d.rule,
                        d.step,
                        &d.value,
                    ];
                    for (i, f) in fields.iter().enumerate() {
                        push_field(&mut defects, f, b',', i == 0);
                    }
                    defects.push('\n');
                }
            }
            line += rec.lines;
        }
        self.truth = truth.into_bytes();
        self.defects = defects.into_bytes();
        self.clean = String::new();
        self.records = Vec::new();
    }
}

/// One export file being written, with its counts; its defects go to a spill file so the
/// defects table can be written in file order without holding them in memory.
struct ExportFile {
    rel: String,
    path: PathBuf,
    stream: Stream,
    writer: BufWriter<File>,
    next_line: u64,
    counts: StreamCounts,
    spill_path: PathBuf,
    spill: BufWriter<File>,
}

/// The fourteen export files of one site.
pub(super) struct SiteFiles {
    files: Vec<[ExportFile; 2]>,
}

fn create_file(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

impl SiteFiles {
    pub(super) fn create(
        out: &Path,
        truth_dir: &Path,
        study: &Study,
        site: usize,
    ) -> anyhow::Result<SiteFiles> {
        let dir = out.join(site_folder(site));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dialect = study.dialect(site);
        let mut files = Vec::new();
        for stream in Stream::ALL {
            let make = |export: usize| -> anyhow::Result<ExportFile> {
                let rel = study.export_file(site, stream, export);
                let path = out.join(&rel);
                let mut writer = create_file(&path)?;
                let mut head = Vec::new();
                if dialect.bom {
                    head.extend_from_slice(b"\xEF\xBB\xBF");
                }
                encode(dialect, &header_line(dialect, stream), &mut head);
                writer.write_all(&head)?;
                let spill_path =
                    truth_dir.join(format!(".defects-{}-{export}.part", stream.name()));
                Ok(ExportFile {
                    rel,
                    path,
                    stream,
                    writer,
                    next_line: 2,
                    counts: StreamCounts::default(),
                    spill: create_file(&spill_path)?,
                    spill_path,
                })
            };
            files.push([make(0)?, make(1)?]);
        }
        Ok(SiteFiles { files })
    }

    /// Assigns each part the line where it starts, then renders the truth lines in parallel.
    pub(super) fn place(&mut self, outs: &mut [SubjectOutput]) {
        let mut starts = Vec::with_capacity(outs.len());
        for out in outs.iter() {
            let mut mine = Vec::with_capacity(Stream::ALL.len());
            for (pair, parts) in self.files.iter_mut().zip(&out.parts) {
                let at = [pair[0].next_line, pair[1].next_line];
                pair[0].next_line += parts[0].lines;
                pair[1].next_line += parts[1].lines;
                mine.push(at);
            }
            starts.push(mine);
        }
        let rels: Vec<[&str; 2]> = self
            .files
            .iter()
            .map(|p| [p[0].rel.as_str(), p[1].rel.as_str()])
            .collect();
        outs.par_iter_mut().zip(starts).for_each(|(out, starts)| {
            for (s, parts) in out.parts.iter_mut().enumerate() {
                for (e, part) in parts.iter_mut().enumerate() {
                    part.finalize(Stream::ALL[s], rels[s][e], starts[s][e]);
                }
            }
        });
    }

    pub(super) fn write(
        &mut self,
        outs: &[SubjectOutput],
        truth: &mut Truth,
    ) -> anyhow::Result<()> {
        for out in outs {
            for (s, (pair, parts)) in self.files.iter_mut().zip(&out.parts).enumerate() {
                for (file, part) in pair.iter_mut().zip(parts) {
                    file.writer
                        .write_all(&part.raw)
                        .with_context(|| format!("cannot write {}", file.path.display()))?;
                    file.spill.write_all(&part.defects)?;
                    truth.clean[s].write_all(&part.truth)?;
                    add_counts(&mut file.counts, &part.counts);
                }
            }
        }
        Ok(())
    }

    /// Flushes the files, moves their defects into the truth; returns the export paths.
    pub(super) fn finish(self, truth: &mut Truth) -> anyhow::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for pair in self.files {
            for mut file in pair {
                file.writer
                    .flush()
                    .with_context(|| format!("cannot write {}", file.path.display()))?;
                file.spill.flush()?;
                drop(file.spill);
                let mut spilled = File::open(&file.spill_path)?;
                std::io::copy(&mut spilled, &mut truth.defects)?;
                fs::remove_file(&file.spill_path)?;
                truth.add_file(&file.rel, file.stream, &file.counts);
                paths.push(file.path);
            }
        }
        Ok(paths)
    }
}

fn add_counts(total: &mut StreamCounts, c: &StreamCounts) {
    total.rows += c.rows;
    total.accepted += c.accepted;
    total.rejected += c.rejected;
    total.collapsed += c.collapsed;
    total.superseded += c.superseded;
}

/// The truth files: clean tables, defects, anchors, per-file counts and the vocabulary.
pub(super) struct Truth {
    dir: PathBuf,
    clean: Vec<BufWriter<File>>,
    defects: BufWriter<File>,
    /// Lines of `files.csv`.
    files: Vec<String>,
    pub counts: Vec<StreamCounts>,
}

impl Truth {
    pub(super) fn create(dir: &Path) -> anyhow::Result<Truth> {
        let mut clean = Vec::new();
        for s in Stream::ALL {
            let mut w = create_file(&dir.join(format!("clean_{}.csv", s.name())))?;
            let mut head = String::new();
            for (i, c) in s.columns().iter().enumerate() {
                push_field(&mut head, c.name, b',', i == 0);
            }
            head.push_str(",SRCFILE,SRCLINE\n");
            w.write_all(head.as_bytes())?;
            clean.push(w);
        }
        let mut defects = create_file(&dir.join("defects.csv"))?;
        defects.write_all(b"file,line,stream,column,fate,rule,step,value\n")?;
        Ok(Truth {
            dir: dir.to_path_buf(),
            clean,
            defects,
            files: Vec::new(),
            counts: vec![StreamCounts::default(); Stream::ALL.len()],
        })
    }

    fn add_file(&mut self, rel: &str, stream: Stream, c: &StreamCounts) {
        self.files.push(format!(
            "{rel},{},{},{},{},{},{}\n",
            stream.name(),
            c.rows,
            c.accepted,
            c.rejected,
            c.collapsed,
            c.superseded
        ));
        add_counts(&mut self.counts[stream.index()], c);
    }

    pub(super) fn finish(
        &mut self,
        study: &Study,
        anchors: &[(usize, Anchors)],
    ) -> anyhow::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (s, w) in Stream::ALL.iter().zip(&mut self.clean) {
            w.flush()?;
            paths.push(self.dir.join(format!("clean_{}.csv", s.name())));
        }
        self.defects.flush()?;
        paths.push(self.dir.join("defects.csv"));

        let path = self.dir.join("files.csv");
        let mut w = create_file(&path)?;
        w.write_all(b"file,stream,rows,accepted,rejected,collapsed,superseded\n")?;
        for line in &self.files {
            w.write_all(line.as_bytes())?;
        }
        w.flush()?;
        paths.push(path);

        let path = self.dir.join("vocabulary.csv");
        let mut w = create_file(&path)?;
        w.write_all(b"kind,parameter,written,canonical,factor\n")?;
        let mut line = String::new();
        for t in vocabulary::vocabulary() {
            line.clear();
            let fields = [
                t.kind,
                t.parameter,
                t.written,
                t.canonical,
                t.factor.as_str(),
            ];
            for (i, f) in fields.iter().enumerate() {
                push_field(&mut line, f, b',', i == 0);
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        w.flush()?;
        paths.push(path);

        let path = self.dir.join("anchors.csv");
        let mut w = create_file(&path)?;
        w.write_all(b"subject,TRTSDT,OPTSDT,LSTVSTDT\n")?;
        for (k, a) in anchors {
            line.clear();
            line.push_str(&study.calendar.subject_id(*k).canonical());
            for d in [a.first_dose, a.optimal, a.final_visit] {
                line.push(',');
                if let Some(d) = d {
                    write_date(&mut line, dialect::DateStyle::Iso, d);
                }
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        w.flush()?;
        paths.push(path);
        Ok(paths)
    }
}
