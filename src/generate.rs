//! `studyflow generate`: seeded synthetic site exports of a study like DOMAIN.md section 1, in
//! several site dialects with known dirt, plus the ground truth a correct pipeline must reach.

mod course;
mod dialect;
mod dirt;
mod output;
mod pipeline_yaml;
mod render;
mod rows;
mod schema;
mod vocabulary;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use course::{Calendar, Course, plus};
use dialect::{DIALECTS, Dialect, Slot, site_folder};
use dirt::{Fate, OutRow, assemble};
use output::{Anchors, SiteFiles, SubjectOutput, Truth, render_part};
use render::{Cell, Scratch, write_date};
use rows::SiteCtx;

pub use dirt::DirtRates;
pub use pipeline_yaml::reference_pipeline;
pub use schema::Stream;

/// What to generate. `Default` is the shipped sample: 18 subjects, 3 years, 3 sites, seed 2018.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Output folder: one subfolder per site, and `truth/`.
    pub out: PathBuf,
    /// Number of subjects, split 10:4:4 into CANDLE (C1..), SAVI (S1..) and OTHER (O1..).
    pub subjects: usize,
    /// Mean years on treatment (each subject 0.5x to 1.5x), 1 to 20.
    pub years: u32,
    /// Number of sites; the three built-in dialects are cycled.
    pub sites: usize,
    /// Same seed, same options: byte-identical output.
    pub seed: u64,
    /// How often each kind of dirt occurs.
    pub dirt: DirtRates,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            out: PathBuf::from("data/sample"),
            subjects: 18,
            years: 3,
            sites: 3,
            seed: 2018,
            dirt: DirtRates::default(),
        }
    }
}

/// Row counts of one stream over all its export files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Records written to the export files.
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub collapsed: u64,
    pub superseded: u64,
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub out: PathBuf,
    /// Export files written (site folders).
    pub export_files: usize,
    /// Truth files written (`truth/`).
    pub truth_files: usize,
    /// Counts per stream, in [`Stream::ALL`] order.
    pub streams: Vec<(Stream, StreamCounts)>,
    /// Bytes of the export files.
    pub export_bytes: u64,
    /// Bytes of the export and truth files.
    pub total_bytes: u64,
}

impl fmt::Display for GenerateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} export files ({:.1} MB) and {} truth files to {} ({:.1} MB in all)",
            self.export_files,
            self.export_bytes as f64 / 1e6,
            self.truth_files,
            self.out.display(),
            self.total_bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "{:<16}{:>10}{:>10}{:>10}{:>10}{:>11}",
            "stream", "rows", "accepted", "rejected", "collapsed", "superseded"
        )?;
        for (s, c) in &self.streams {
            writeln!(
                f,
                "{:<16}{:>10}{:>10}{:>10}{:>10}{:>11}",
                s.name(),
                c.rows,
                c.accepted,
                c.rejected,
                c.collapsed,
                c.superseded
            )?;
        }
        Ok(())
    }
}

/// Largest mean follow-up: beyond it, subjects would have to start before 1990.
const MAX_YEARS: u32 = 20;
/// More sites than this would open too many files at once and make no sense for a study.
const MAX_SITES: usize = 60;
/// Subjects generated in parallel before their rows are written.
const CHUNK: usize = 64;

/// Reads one file of `truth/` (plain CSV with a header line): each row by column name.
pub fn read_truth(
    path: &Path,
) -> Result<Vec<std::collections::HashMap<String, String>>, csv::Error> {
    let mut r = csv::Reader::from_path(path)?;
    let head = r.headers()?.clone();
    r.records()
        .map(|rec| {
            let rec = rec?;
            Ok(head
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect())
        })
        .collect()
}

/// Writes the site exports and the truth of a synthetic cohort into `opts.out`.
///
/// A folder that holds an earlier output (it has `truth/anchors.csv`) is cleared of the
/// site and truth folders first; a folder with other subfolders or CSV files is refused.
pub fn generate(opts: &GenerateOptions) -> anyhow::Result<GenerateSummary> {
    check_options(opts)?;
    prepare_out_dir(&opts.out)?;
    let study = Study::new(opts);
    let truth_dir = opts.out.join("truth");
    fs::create_dir_all(&truth_dir)
        .with_context(|| format!("cannot create {}", truth_dir.display()))?;
    let mut truth = Truth::create(&truth_dir)?;
    let mut export_paths = Vec::new();
    let mut anchors: Vec<(usize, Anchors)> = Vec::with_capacity(opts.subjects);

    for site in 0..opts.sites {
        let mut files = SiteFiles::create(&opts.out, &truth_dir, &study, site)?;
        let members: Vec<usize> = (site..opts.subjects).step_by(opts.sites).collect();
        let mut chunks = members.chunks(CHUNK);
        let mut ready = chunks.next().map(|c| {
            let mut outs = generate_chunk(&study, c);
            files.place(&mut outs);
            outs
        });
        while let Some(done) = ready {
            let next = chunks.next();
            // Write one chunk while the next is generated.
            let (written, generated) = rayon::join(
                || files.write(&done, &mut truth),
                || next.map(|c| generate_chunk(&study, c)),
            );
            written?;
            anchors.extend(done.into_iter().map(|o| (o.index, o.anchors)));
            ready = generated.map(|mut outs| {
                files.place(&mut outs);
                outs
            });
        }
        export_paths.extend(files.finish(&mut truth)?);
    }
    anchors.sort_by_key(|(k, _)| *k);
    let truth_paths = truth.finish(&study, &anchors)?;

    let size = |p: &PathBuf| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let export_bytes: u64 = export_paths.iter().map(size).sum();
    let total_bytes = export_bytes + truth_paths.iter().map(size).sum::<u64>();
    Ok(GenerateSummary {
        out: opts.out.clone(),
        export_files: export_paths.len(),
        truth_files: truth_paths.len(),
        streams: Stream::ALL
            .iter()
            .map(|s| (*s, truth.counts[s.index()].clone()))
            .collect(),
        export_bytes,
        total_bytes,
    })
}

fn check_options(opts: &GenerateOptions) -> anyhow::Result<()> {
    if opts.subjects == 0 {
        bail!("--subjects must be at least 1");
    }
    if opts.years == 0 || opts.years > MAX_YEARS {
        bail!(
            "--years must be between 1 and {MAX_YEARS} (got {}): longer follow-up would need dates before 1990",
            opts.years
        );
    }
    if opts.sites == 0 || opts.sites > MAX_SITES {
        bail!(
            "--sites must be between 1 and {MAX_SITES} (got {})",
            opts.sites
        );
    }
    opts.dirt.check().map_err(anyhow::Error::msg)
}

/// Makes `out` an empty folder, or clears an earlier generated output in it.
fn prepare_out_dir(out: &Path) -> anyhow::Result<()> {
    if !out.exists() {
        return fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()));
    }
    let entries: Vec<fs::DirEntry> = fs::read_dir(out)
        .with_context(|| format!("cannot read {}", out.display()))?
        .collect::<Result<_, _>>()?;
    // Loose files such as a README are left alone; folders and CSV files may be someone's
    // data unless they are an earlier output of this command.
    let data_like = entries
        .iter()
        .any(|e| e.path().is_dir() || e.path().extension().is_some_and(|x| x == "csv"));
    if !data_like {
        return Ok(());
    }
    if !out.join("truth").join("anchors.csv").is_file() {
        bail!(
            "{} holds folders or CSV files that are not an earlier `studyflow generate` output; choose an empty or new folder",
            out.display()
        );
    }
    // Only folders that hold nothing but CSV files are ours (site folders and truth/).
    for e in entries {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let only_csv = fs::read_dir(&path)?.all(|f| {
            f.map(|f| f.path().is_file() && f.path().extension().is_some_and(|x| x == "csv"))
                .unwrap_or(false)
        });
        if only_csv {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot clear {}", path.display()))?;
        }
    }
    Ok(())
}

/// Settings shared by every subject.
struct Study {
    opts: GenerateOptions,
    calendar: Calendar,
    /// Export dates (first, second) per site.
    exports: Vec<[NaiveDate; 2]>,
    /// Resolved header layouts per dialect and stream: (canonical column index, slot).
    slots: Vec<Vec<Vec<(usize, Slot)>>>,
}

impl Study {
    fn new(opts: &GenerateOptions) -> Study {
        let calendar = Calendar::new(opts.subjects, opts.years);
        let exports = (0..opts.sites)
            .map(|s| {
                let second = plus(calendar.cutoff, (s % 3) as i64);
                [plus(second, -92), second]
            })
            .collect();
        let slots = DIALECTS
            .iter()
            .map(|d| {
                Stream::ALL
                    .iter()
                    .map(|s| {
                        d.layout(*s)
                            .iter()
                            .map(|(_, slot)| match slot {
                                Slot::Col(name) => (s.col(name), *slot),
                                Slot::Comment => (usize::MAX, *slot),
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Study {
            opts: opts.clone(),
            calendar,
            exports,
            slots,
        }
    }

    fn dialect(&self, site: usize) -> &'static Dialect {
        &DIALECTS[site % DIALECTS.len()]
    }

    /// Path of an export file relative to the output folder, with `/` separators.
    fn export_file(&self, site: usize, stream: Stream, export: usize) -> String {
        let mut name = format!("{}/{}_", site_folder(site), stream.name());
        write_date(
            &mut name,
            dialect::DateStyle::Iso,
            self.exports[site][export],
        );
        name.push_str(".csv");
        name
    }
}

/// An independent random stream per (seed, purpose, subject), so subjects can be generated
/// in any order and in parallel with identical results.
fn rng_for(seed: u64, purpose: u64, subject: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(subject as u64);
    rng
}

const PURPOSE_COURSE: u64 = 1;
const PURPOSE_ROWS: u64 = 10;
const PURPOSE_DIRT: u64 = 20;

fn generate_chunk(study: &Study, members: &[usize]) -> Vec<SubjectOutput> {
    members
        .par_iter()
        .map(|&k| generate_subject(study, k))
        .collect()
}

fn generate_subject(study: &Study, k: usize) -> SubjectOutput {
    let seed = study.opts.seed;
    let site = k % study.opts.sites;
    let dialect = study.dialect(site);
    let exports = study.exports[site];
    let mut rng = rng_for(seed, PURPOSE_COURSE, k);
    let course = Course::draw(&study.calendar, k, &mut rng);
    let ctx = SiteCtx {
        dialect,
        first_export: exports[0],
        missing_rate: study.opts.dirt.missing_optional,
    };
    let mut anchors = Anchors::default();
    let mut scratch = Scratch::default();
    let mut parts = Vec::with_capacity(Stream::ALL.len());
    for stream in Stream::ALL {
        let i = stream.index() as u64;
        let mut rows_rng = rng_for(seed, PURPOSE_ROWS + i, k);
        let rows = rows::rows(stream, &course, &ctx, &mut rows_rng);
        let mut dirt_rng = rng_for(seed, PURPOSE_DIRT + i, k);
        let files = assemble(
            stream,
            dialect,
            rows,
            exports[0],
            &study.opts.dirt,
            &mut dirt_rng,
        );
        let slots = &study.slots[site % DIALECTS.len()][stream.index()];
        for rows in &files {
            note_anchors(stream, rows, &mut anchors);
        }
        let [first, second] = files;
        parts.push([
            render_part(&mut scratch, stream, dialect, slots, first),
            render_part(&mut scratch, stream, dialect, slots, second),
        ]);
    }
    SubjectOutput {
        index: k,
        parts,
        anchors,
    }
}

fn note_anchors(stream: Stream, rows: &[OutRow], anchors: &mut Anchors) {
    fn earliest(slot: &mut Option<NaiveDate>, d: NaiveDate) {
        *slot = Some(slot.map_or(d, |s| s.min(d)));
    }
    for row in rows.iter().filter(|r| r.fate == Fate::Accepted) {
        match (stream, &row.cells[1]) {
            (Stream::Dosing, Cell::Date(start)) => {
                earliest(&mut anchors.first_dose, *start);
                if matches!(&row.cells[5], Cell::Text(t) if t.eq_ignore_ascii_case("optimal")) {
                    earliest(&mut anchors.optimal, *start);
                }
            }
            (Stream::Visits, Cell::Date(d)) => {
                anchors.final_visit = Some(anchors.final_visit.map_or(*d, |s| s.max(*d)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Bound, PipelineSpec};
    use std::collections::{BTreeMap, HashMap};

    fn options(out: &Path, subjects: usize, years: u32, seed: u64) -> GenerateOptions {
        GenerateOptions {
            out: out.to_path_buf(),
            subjects,
            years,
            sites: 3,
            seed,
            dirt: DirtRates::default(),
        }
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Hash of every file under `dir` by relative path (README.md and dotfiles left out).
    fn hashes(dir: &Path) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .is_some_and(|n| n != "README.md" && !n.to_string_lossy().starts_with('.'))
                {
                    let rel = p
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.insert(rel, fnv1a(&fs::read(&p).unwrap()));
                }
            }
        }
        out
    }

    fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
        read_truth(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn same_seed_gives_identical_bytes_and_another_seed_differs() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        generate(&options(a.path(), 7, 1, 42)).unwrap();
        generate(&options(b.path(), 7, 1, 42)).unwrap();
        generate(&options(c.path(), 7, 1, 43)).unwrap();
        let (ha, hb, hc) = (hashes(a.path()), hashes(b.path()), hashes(c.path()));
        assert_eq!(ha.len(), 42 + 11);
        assert_eq!(ha, hb);
        let differing = ha.iter().filter(|(k, v)| hc.get(*k) != Some(v)).count();
        assert!(
            differing > 30,
            "only {differing} files differ between seeds"
        );
    }

    #[test]
    fn regenerating_into_an_earlier_output_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        generate(&options(dir.path(), 4, 1, 1)).unwrap();
        fs::write(dir.path().join("README.md"), "kept").unwrap();
        generate(&options(dir.path(), 4, 2, 1)).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        generate(&options(fresh.path(), 4, 2, 1)).unwrap();
        assert_eq!(hashes(dir.path()), hashes(fresh.path()));
        assert_eq!(
            fs::read_to_string(dir.path().join("README.md")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn bad_options_and_foreign_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 0, 1, 1);
        assert!(generate(&o).unwrap_err().to_string().contains("--subjects"));
        o.subjects = 3;
        o.years = 21;
        assert!(generate(&o).unwrap_err().to_string().contains("--years"));
        o.years = 1;
        o.dirt.unknown_drug = 0.99;
        assert!(generate(&o).unwrap_err().to_string().contains("steroids"));
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        generate(&options(dir.path(), 3, 1, 1)).unwrap();
        let foreign = tempfile::tempdir().unwrap();
        fs::write(foreign.path().join("lab.csv"), "a,b\n").unwrap();
        let err = generate(&options(foreign.path(), 3, 1, 1)).unwrap_err();
        assert!(err.to_string().contains("not an earlier"), "{err}");
    }

    #[test]
    fn more_sites_than_dialects_cycle_them_and_empty_sites_get_header_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 5, 1, 3);
        o.sites = 7;
        let summary = generate(&o).unwrap();
        assert_eq!(summary.export_files, 7 * 14);
        let files: Vec<_> = fs::read_dir(dir.path().join("nih_3")).unwrap().collect();
        assert_eq!(files.len(), 14);
        // Site 6 (`nih_3`) has no subject: its files hold the header alone.
        for f in files {
            let text = fs::read_to_string(f.unwrap().path()).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
        }
        let spec = reference_pipeline(7, "x", "y");
        assert!(spec.contains("  - name: sao_paulo_2\n    dialect:\n      delimiter: tab\n"));
    }

    #[test]
    fn without_dirt_every_row_is_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 5, 1, 9);
        o.dirt = DirtRates::none();
        let summary = generate(&o).unwrap();
        for (s, c) in &summary.streams {
            assert!(c.accepted > 0, "{}", s.name());
            // Orders still open at the first export are re-exported once they end.
            assert_eq!(c.rows, c.accepted + c.superseded, "{}", s.name());
        }
        let defects = read_csv(&dir.path().join("truth/defects.csv"));
        assert!(defects.iter().all(|d| d["fate"] == "superseded"));
    }

    #[test]
    fn sample_cohort_follows_the_study_design() {
        let dir = tempfile::tempdir().unwrap();
        generate(&options(dir.path(), 18, 3, 2018)).unwrap();
        let subjects = read_csv(&dir.path().join("truth/anchors.csv"));
        let ids: Vec<&str> = subjects.iter().map(|r| r["subject"].as_str()).collect();
        assert_eq!(ids[..3], ["C1", "C2", "C3"]);
        assert_eq!(ids.iter().filter(|i| i.starts_with('S')).count(), 4);
        assert_eq!(ids.iter().filter(|i| i.starts_with('O')).count(), 4);
        let never_dosed = subjects.iter().filter(|r| r["TRTSDT"].is_empty()).count();
        assert_eq!(never_dosed, 1);
        let never_optimal = subjects
            .iter()
            .filter(|r| !r["TRTSDT"].is_empty() && r["OPTSDT"].is_empty())
            .count();
        assert!(never_optimal >= 2, "{never_optimal}");
        // Every date in every clean table lies in 1990..2026.
        for s in Stream::ALL {
            for row in read_csv(&dir.path().join(format!("truth/clean_{}.csv", s.name()))) {
                for c in s.columns().iter().filter(|c| c.ty == schema::ColType::Date) {
                    let v = &row[c.name];
                    assert!(
                        v.is_empty() || ("1990-01-01"..="2026-01-01").contains(&v.as_str()),
                        "{v}"
                    );
                }
            }
        }
    }

    /// Records by (site, stream, natural key): their file and line.
    type KeyIndex<'a> = HashMap<(String, String, Vec<String>), Vec<(&'a String, u64)>>;

    /// A record of an export file as a reader following the pipeline YAML literally sees it.
    #[derive(Debug, Clone)]
    struct Read {
        stream: String,
        site: String,
        /// Canonical values, or the rule and column that reject the record at ingest.
        values: Result<Vec<String>, (String, String)>,
        /// Raw text per canonical column.
        raw: Vec<String>,
    }

    fn bound(b: &Option<Bound>) -> Option<f64> {
        match b {
            Some(Bound::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// Reads every export file under `dir` with the sites and sources of `spec`.
    fn read_with_pipeline(spec: &PipelineSpec, dir: &Path) -> BTreeMap<(String, u64), Read> {
        let today = chrono::Local::now().date_naive();
        let min = NaiveDate::parse_from_str(&spec.header.dates.min, "%Y-%m-%d").unwrap();
        let mut out = BTreeMap::new();
        for site in &spec.sites {
            let site = &site.value;
            let d = &site.dialect;
            let folder = site.folder.clone().unwrap_or(site.name.clone());
            let id = d.subject_id.as_ref().unwrap();
            let id_re = regex::Regex::new(&id.pattern).unwrap();
            let delimiter = if d.delimiter == "tab" {
                b'\t'
            } else {
                d.delimiter.as_bytes()[0]
            };
            for source in &spec.sources {
                let source = &source.value;
                let prefix = source.files.split('*').next().unwrap();
                let mut files: Vec<PathBuf> = fs::read_dir(dir.join(&folder))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                    .collect();
                files.sort();
                for path in files {
                    let bytes = fs::read(&path).unwrap();
                    let text: String = if d.encoding == "latin-1" {
                        bytes.iter().map(|b| char::from(*b)).collect()
                    } else {
                        String::from_utf8(bytes).unwrap()
                    };
                    let rel = format!("{folder}/{}", path.file_name().unwrap().to_string_lossy());
                    let mut r = csv::ReaderBuilder::new()
                        .delimiter(delimiter)
                        .flexible(true)
                        .from_reader(text.as_bytes());
                    let headers = r.headers().unwrap().clone();
                    let positions: Vec<usize> = source
                        .columns
                        .iter()
                        .map(|c| {
                            headers
                                .iter()
                                .position(|h| {
                                    c.value
                                        .headers
                                        .iter()
                                        .any(|a| a.trim().eq_ignore_ascii_case(h.trim()))
                                })
                                .unwrap_or_else(|| panic!("{rel}: no header for {}", c.value.name))
                        })
                        .collect();
                    let (mut counted, mut newlines) = (0usize, 0u64);
                    for rec in r.records() {
                        let rec = rec.unwrap();
                        // Physical line of the record's first byte: the csv crate's own line
                        // count is one short after a CRLF line end.
                        let mut start = rec.position().unwrap().byte() as usize;
                        while matches!(text.as_bytes().get(start), Some(b'\r' | b'\n')) {
                            start += 1;
                        }
                        newlines += text.as_bytes()[counted..start]
                            .iter()
                            .filter(|b| **b == b'\n')
                            .count() as u64;
                        counted = start;
                        let line = 1 + newlines;
                        let raw: Vec<String> = positions
                            .iter()
                            .map(|p| rec.get(*p).unwrap_or("").to_string())
                            .collect();
                        let values = if rec.len() != headers.len() {
                            Err(("columns".to_string(), String::new()))
                        } else {
                            source
                                .columns
                                .iter()
                                .zip(&raw)
                                .map(|(c, raw)| {
                                    let c = &c.value;
                                    let fail = |rule: &str| (rule.to_string(), c.name.clone());
                                    let t = raw.trim();
                                    if d.missing.iter().any(|m| m == t) {
                                        return if c.required {
                                            Err(fail("required"))
                                        } else {
                                            Ok(String::new())
                                        };
                                    }
                                    let in_range = |v: f64| {
                                        bound(&c.min).is_none_or(|m| v >= m)
                                            && bound(&c.max).is_none_or(|m| v <= m)
                                    };
                                    match c.ty.as_str() {
                                        "subject" => {
                                            if !id_re.is_match(t) {
                                                return Err(fail("subject_id"));
                                            }
                                            let v =
                                                id_re.replace(t, id.replace.as_str()).to_string();
                                            Ok(if id.uppercase { v.to_uppercase() } else { v })
                                        }
                                        "date" => {
                                            let parsed = d
                                                .date_formats
                                                .iter()
                                                .find_map(|f| NaiveDate::parse_from_str(t, f).ok());
                                            match parsed {
                                                None => Err(fail("parse")),
                                                Some(v) if v < min || v > today => {
                                                    Err(fail("date_range"))
                                                }
                                                Some(v) => Ok(v.format("%Y-%m-%d").to_string()),
                                            }
                                        }
                                        "int" => match t.parse::<i64>() {
                                            Err(_) => Err(fail("parse")),
                                            Ok(v) if !in_range(v as f64) => Err(fail("range")),
                                            Ok(v) => Ok(v.to_string()),
                                        },
                                        "float" => {
                                            let t = if d.decimal == "," {
                                                t.replace(',', ".")
                                            } else {
                                                t.to_string()
                                            };
                                            match t.parse::<f64>() {
                                                Err(_) => Err(fail("parse")),
                                                Ok(v) if !in_range(v) => Err(fail("range")),
                                                Ok(v) => Ok(format!("{v:?}")),
                                            }
                                        }
                                        _ => match &c.allowed {
                                            Some(allowed) => allowed
                                                .iter()
                                                .find(|a| a.eq_ignore_ascii_case(t))
                                                .cloned()
                                                .ok_or_else(|| fail("allowed")),
                                            None => Ok(raw.clone()),
                                        },
                                    }
                                })
                                .collect()
                        };
                        let read = Read {
                            stream: source.name.clone(),
                            site: site.name.clone(),
                            values,
                            raw,
                        };
                        out.insert((rel.clone(), line), read);
                    }
                }
            }
        }
        out
    }

    fn reference_spec() -> PipelineSpec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/reference.yaml");
        PipelineSpec::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn truth_agrees_with_a_literal_reading_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 12, 2, 77);
        o.dirt = DirtRates::dense();
        generate(&o).unwrap();
        let spec = reference_spec();
        let records = read_with_pipeline(&spec, dir.path());
        let truth = dir.path().join("truth");

        // Clean rows: each points at a record that reads to exactly its values.
        let mut fate_of: HashMap<(String, u64), String> = HashMap::new();
        let mut accepted_keys: HashMap<(String, Vec<String>), (String, u64)> = HashMap::new();
        for s in Stream::ALL {
            for row in read_csv(&truth.join(format!("clean_{}.csv", s.name()))) {
                let key = (
                    row["SRCFILE"].clone(),
                    row["SRCLINE"].parse::<u64>().unwrap(),
                );
                let rec = records
                    .get(&key)
                    .unwrap_or_else(|| panic!("no record at {key:?}"));
                assert_eq!(rec.stream, s.name());
                let want: Vec<String> = s.columns().iter().map(|c| row[c.name].clone()).collect();
                assert_eq!(rec.values.as_ref().ok(), Some(&want), "{key:?}");
                let nat: Vec<String> = s.key().iter().map(|k| row[*k].clone()).collect();
                let dup = accepted_keys.insert((s.name().to_string(), nat.clone()), key.clone());
                assert!(dup.is_none(), "two accepted rows with key {nat:?}");
                assert!(fate_of.insert(key, "accepted".into()).is_none());
            }
        }

        // Defects: each points at a record whose reading explains its fate.
        let natural = |stream: Stream, r: &Read| -> Option<Vec<String>> {
            let v = r.values.as_ref().ok()?;
            Some(
                stream
                    .key()
                    .iter()
                    .map(|k| v[stream.col(k)].clone())
                    .collect(),
            )
        };
        let mut by_key: KeyIndex = HashMap::new();
        for ((file, line), r) in &records {
            let stream = Stream::ALL
                .into_iter()
                .find(|s| s.name() == r.stream)
                .unwrap();
            if let Some(k) = natural(stream, r) {
                by_key
                    .entry((r.site.clone(), r.stream.clone(), k))
                    .or_default()
                    .push((file, *line));
            }
        }
        let vocabulary = read_csv(&truth.join("vocabulary.csv"));
        let mut rules: Vec<String> = Vec::new();
        let defects = read_csv(&truth.join("defects.csv"));
        for d in &defects {
            let key = (d["file"].clone(), d["line"].parse::<u64>().unwrap());
            let rec = records
                .get(&key)
                .unwrap_or_else(|| panic!("no record at {key:?}"));
            assert_eq!(rec.stream, d["stream"]);
            assert!(
                fate_of.insert(key.clone(), d["fate"].clone()).is_none(),
                "{key:?} twice"
            );
            let stream = Stream::ALL
                .into_iter()
                .find(|s| s.name() == d["stream"])
                .unwrap();
            let col = |name: &str| stream.columns().iter().position(|c| c.name == name);
            let same_key: Vec<(&String, u64, &Read)> = natural(stream, rec)
                .and_then(|k| by_key.get(&(rec.site.clone(), rec.stream.clone(), k)))
                .map(|v| {
                    v.iter()
                        .map(|(f, l)| (*f, *l, &records[&((*f).clone(), *l)]))
                        .collect()
                })
                .unwrap_or_default();
            rules.push(if d["rule"].is_empty() {
                d["fate"].clone()
            } else {
                d["rule"].clone()
            });
            match (d["fate"].as_str(), d["step"].as_str()) {
                ("rejected", "ingest") => {
                    let (rule, column) = rec
                        .values
                        .clone()
                        .expect_err(&format!("{key:?} reads fine"));
                    assert_eq!(
                        (rule.as_str(), column.as_str()),
                        (d["rule"].as_str(), d["column"].as_str()),
                        "{key:?}"
                    );
                    if let Some(c) = col(&d["column"]) {
                        assert_eq!(rec.raw[c], d["value"], "{key:?}");
                    }
                }
                ("rejected", "harmonise") => {
                    assert!(rec.values.is_ok(), "{key:?}");
                    let c = col(&d["column"]).unwrap();
                    assert_eq!(rec.raw[c], d["value"]);
                    // Units are known per parameter; spellings compare as DOMAIN.md 4.1 says.
                    let norm = |u: &str| u.to_lowercase().replace('µ', "u").replace(' ', "");
                    let code = |kind: &str, written: &str| {
                        vocabulary
                            .iter()
                            .find(|t| t["kind"] == kind && t["written"] == written)
                            .map(|t| t["canonical"].clone())
                            .unwrap_or_default()
                    };
                    let parameter = match (stream, d["column"].as_str()) {
                        (Stream::Labs, _) => code("analyte", &rec.raw[stream.col("analyte")]),
                        (Stream::Questionnaires, _) => {
                            code("instrument", &rec.raw[stream.col("instrument")])
                        }
                        (_, "height_unit") => "height".to_string(),
                        (_, "weight_unit") => "weight".to_string(),
                        _ => String::new(),
                    };
                    let known = vocabulary.iter().any(|t| {
                        t["kind"] == d["rule"]
                            && t["parameter"] == parameter
                            && norm(&t["written"]) == norm(&d["value"])
                    });
                    assert!(
                        !known,
                        "{key:?}: `{}` is a known {} of `{parameter}`",
                        d["value"], d["rule"]
                    );
                }
                ("rejected", "dedupe") => {
                    assert_eq!(d["rule"], "conflict");
                    let partner = same_key
                        .iter()
                        .any(|(f, l, r)| **f == key.0 && *l != key.1 && r.values != rec.values);
                    assert!(partner, "{key:?}: no conflicting partner");
                }
                ("collapsed", _) => {
                    let twin = same_key
                        .iter()
                        .any(|(f, l, r)| **f == key.0 && *l < key.1 && r.values == rec.values);
                    assert!(twin, "{key:?}: no identical earlier record");
                }
                ("superseded", _) => {
                    let newer = same_key.iter().any(|(f, _, _)| **f > key.0);
                    assert!(newer, "{key:?}: nothing newer with its key");
                }
                other => panic!("unexpected fate {other:?}"),
            }
        }
        // Every record has exactly one fate, so rows per file = clean + defects.
        assert_eq!(fate_of.len(), records.len());
        let mut per_file: BTreeMap<&str, usize> = BTreeMap::new();
        for (file, _) in fate_of.keys() {
            *per_file.entry(file.as_str()).or_default() += 1;
        }
        for (file, n) in &per_file {
            assert_eq!(
                records.keys().filter(|(f, _)| f == file).count(),
                *n,
                "{file}"
            );
        }
        for f in read_csv(&truth.join("files.csv")) {
            let n = records
                .keys()
                .filter(|(file, _)| *file == f["file"])
                .count();
            assert_eq!(f["rows"].parse::<usize>().unwrap(), n, "{}", f["file"]);
        }
        for rule in [
            "parse",
            "date_range",
            "required",
            "range",
            "allowed",
            "subject_id",
            "columns",
            "unit",
            "dose_unit",
            "drug",
            "frequency",
            "conflict",
            "collapsed",
            "superseded",
        ] {
            assert!(rules.iter().any(|r| r == rule), "no `{rule}` defect");
        }

        // Anchors follow from the clean tables.
        let dosing = read_csv(&truth.join("clean_dosing.csv"));
        let visits = read_csv(&truth.join("clean_visits.csv"));
        for a in read_csv(&truth.join("anchors.csv")) {
            let mine = |r: &&HashMap<String, String>| r["subject"] == a["subject"];
            let first = dosing
                .iter()
                .filter(mine)
                .map(|r| r["start"].clone())
                .min()
                .unwrap_or_default();
            let optimal = dosing
                .iter()
                .filter(mine)
                .filter(|r| r["regimen"] == "optimal")
                .map(|r| r["start"].clone())
                .min()
                .unwrap_or_default();
            let last = visits
                .iter()
                .filter(mine)
                .map(|r| r["date"].clone())
                .max()
                .unwrap_or_default();
            assert_eq!(
                (
                    a["TRTSDT"].clone(),
                    a["OPTSDT"].clone(),
                    a["LSTVSTDT"].clone()
                ),
                (first, optimal, last)
            );
        }
    }

    #[test]
    fn reference_pipeline_reads_every_site_header() {
        let spec = reference_spec();
        let folders: Vec<&str> = spec.sites.iter().map(|s| s.value.name.as_str()).collect();
        assert_eq!(folders, ["nih", "hamburg", "sao_paulo"]);
        for source in &spec.sources {
            let stream = Stream::ALL
                .into_iter()
                .find(|s| s.name() == source.value.name)
                .unwrap();
            let names: Vec<&str> = source
                .value
                .columns
                .iter()
                .map(|c| c.value.name.as_str())
                .collect();
            let canonical: Vec<&str> = stream.columns().iter().map(|c| c.name).collect();
            assert_eq!(names, canonical);
            for d in &DIALECTS {
                for (header, slot) in d.layout(stream) {
                    let hits: Vec<&str> = source
                        .value
                        .columns
                        .iter()
                        .filter(|c| {
                            c.value
                                .headers
                                .iter()
                                .any(|a| a.trim().eq_ignore_ascii_case(header.trim()))
                        })
                        .map(|c| c.value.name.as_str())
                        .collect();
                    match slot {
                        Slot::Col(name) => assert_eq!(hits, [*name], "{} `{header}`", d.folder),
                        Slot::Comment => assert!(hits.is_empty()),
                    }
                }
            }
        }
        let stages: Vec<&str> = spec
            .stages
            .iter()
            .map(|s| s.common.name.value.as_str())
            .collect();
        // Every stream is ingested and deduplicated; harmonisation stages follow.
        for s in Stream::ALL {
            assert!(stages.contains(&format!("{}_raw", s.name()).as_str()));
            assert!(stages.contains(&s.name()), "{}", s.name());
        }
        assert_eq!(stages[..2], ["subjects_raw", "subjects"]);
    }

    #[test]
    fn shipped_sample_is_what_the_recorded_command_writes() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
        let readme = fs::read_to_string(shipped.join("README.md")).unwrap();
        assert!(readme.contains(
            "studyflow generate --out data/sample --subjects 18 --years 3 --sites 3 --seed 2018"
        ));
        let dir = tempfile::tempdir().unwrap();
        generate(&options(dir.path(), 18, 3, 2018)).unwrap();
        assert_eq!(hashes(&shipped), hashes(dir.path()));
    }
}
