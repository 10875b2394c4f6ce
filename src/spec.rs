//! The pipeline YAML, parsed 1:1 into types with no logic (the "spec").
//! Every list element is parsed on its own so that all mistakes are reported together.
//!
//! Parsing is linear in the file's size: one pass over the parser's events finds the lines of
//! every element of `sites`, `sources` and `stages` (the [`Outline`]), and each element is then
//! parsed from its own lines, padded with blank lines so that every location stays that of the
//! whole file. Where the outline cannot be trusted (anchors and aliases, directives, flow-style
//! lists with elements, lone CR line breaks) or an element fails, the element is parsed by walking
//! the whole document to it, which gives the same value or the same located error.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_saphyr::Spanned;

use crate::error::{ConfigErrors, ConfigProblem};

/// A whole pipeline file: sites, sources and stages.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub path: PathBuf,
    pub text: String,
    /// Each stage's own lines (padded to keep locations), by position in the `stages` list;
    /// `None` where the stage is parsed from the whole document.
    stage_texts: Vec<Option<String>>,
    pub header: HeaderSpec,
    pub sites: Vec<Spanned<SiteSpec>>,
    pub sources: Vec<Spanned<SourceSpec>>,
    pub stages: Vec<StageEntry>,
    /// Problems found while parsing list elements; the plan reports them with its own.
    pub problems: Vec<ConfigProblem>,
}

/// The top-level keys of a pipeline file other than the three lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// Name of the pipeline (study and protocol version, for example).
    pub pipeline: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Folder of the raw site exports, relative to this YAML file.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Output folder (runs, cache, `current`), relative to this YAML file.
    #[serde(default)]
    pub out_dir: Option<String>,
    /// Plausible dates: earlier or later dates reject their row.
    #[serde(default)]
    pub dates: DatePolicySpec,
    /// Columns that identify a person; their values are masked in logs and messages.
    #[serde(default)]
    pub identifying: Vec<String>,
    // The three lists are parsed element by element elsewhere; they are named here so that
    // `deny_unknown_fields` accepts them.
    #[serde(default)]
    #[allow(dead_code)]
    sites: IgnoredList,
    #[serde(default)]
    #[allow(dead_code)]
    sources: IgnoredList,
    #[serde(default)]
    #[allow(dead_code)]
    stages: IgnoredList,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IgnoredList(
    #[serde(default)]
    #[allow(dead_code)]
    Vec<IgnoredAny>,
);

/// The window of plausible dates (DOMAIN: before 1990 or after the run date rejects).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatePolicySpec {
    /// Earliest plausible date, `YYYY-MM-DD`.
    #[serde(default = "default_min_date")]
    pub min: String,
    /// Latest plausible date, `YYYY-MM-DD`; empty means the run date.
    #[serde(default)]
    pub max: Option<String>,
}

impl Default for DatePolicySpec {
    fn default() -> Self {
        DatePolicySpec {
            min: default_min_date(),
            max: None,
        }
    }
}

fn default_min_date() -> String {
    "1990-01-01".to_string()
}

/// A study site: its folder of exports and the dialect its files are written in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    /// Folder under `data_dir`; defaults to the site name.
    #[serde(default)]
    pub folder: Option<String>,
    pub dialect: DialectSpec,
}

/// How one site writes its CSV files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialectSpec {
    /// Field delimiter: `,`, `;`, `|` or `tab`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Text encoding: `utf-8` (a BOM is skipped) or `latin-1`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// Decimal mark: `.` or `,`.
    #[serde(default = "default_decimal")]
    pub decimal: String,
    /// Date formats tried in order (strftime, e.g. `%d.%m.%Y`, `%d-%b-%Y`).
    #[serde(default = "default_date_formats")]
    pub date_formats: Vec<String>,
    /// Cell values that mean "missing", compared after trimming.
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    /// How subject ids are normalised to the canonical id.
    #[serde(default)]
    pub subject_id: Option<SubjectIdSpec>,
}

fn default_delimiter() -> String {
    ",".into()
}
fn default_encoding() -> String {
    "utf-8".into()
}
fn default_decimal() -> String {
    ".".into()
}
fn default_date_formats() -> Vec<String> {
    vec!["%Y-%m-%d".into()]
}
/// The missing-value tokens of DOMAIN.md section 2.
pub fn default_missing() -> Vec<String> {
    ["", "NA", "N/A", "ND", ".", "-"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A regex rewrite that turns a site's spelling of a subject id into the canonical id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectIdSpec {
    /// Regex matched against the trimmed id; the whole id must match.
    pub pattern: String,
    /// Replacement with capture groups (`${1}${2}`).
    pub replace: String,
    /// Upper-case the result.
    #[serde(default)]
    pub uppercase: bool,
}

/// One data stream (for example the diary) exported by one or more sites.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// File glob inside each site's folder, e.g. `diary_*.csv`.
    pub files: String,
    /// Sites that export this stream; defaults to every site.
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    /// How the export date is read from a file name.
    #[serde(default)]
    pub export_date: Option<ExportDateSpec>,
    /// Largest fraction of a file's rows that may be rejected before the run fails.
    #[serde(default = "default_reject_limit")]
    pub reject_limit: f64,
    /// Canonical columns, in output order.
    pub columns: Vec<Spanned<ColumnSpec>>,
}

fn default_reject_limit() -> f64 {
    0.25
}

/// Where the export date sits in a file name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDateSpec {
    /// Regex with one capture group around the date.
    pub pattern: String,
    /// strftime format of the captured date.
    pub format: String,
}

/// One canonical column of a source, the headers it may have and its checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// `subject`, `string`, `int`, `float` or `date`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Header spellings used by the sites (matched ignoring case and surrounding spaces).
    #[serde(default)]
    pub headers: Vec<String>,
    /// A missing value rejects the row.
    #[serde(default)]
    pub required: bool,
    /// The column may be absent from a file; its values are then missing.
    #[serde(default)]
    pub optional: bool,
    /// Smallest plausible value (number, or date for date columns).
    #[serde(default)]
    pub min: Option<Bound>,
    /// Largest plausible value.
    #[serde(default)]
    pub max: Option<Bound>,
    /// Allowed values, matched ignoring case; the value is written as listed here.
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// Regex the (trimmed) value must match.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// A range bound: a number, or a `YYYY-MM-DD` date.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Bound {
    Number(f64),
    Text(String),
}

/// The keys every stage has; the rest of the stage's mapping is its kind's parameters.
#[derive(Debug, Clone, Deserialize)]
pub struct StageCommon {
    /// Stage name = the name of the table it produces.
    pub name: Spanned<String>,
    /// Stage kind (see the stage kind list).
    pub kind: Spanned<String>,
    /// Tables this stage reads.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// Write this table to the published output folder.
    #[serde(default)]
    pub publish: bool,
    /// Keep this stage's table in the cache (default true). `false` for an unpublished table
    /// cheaper to compute again from its inputs than to write and read back (like a view):
    /// a later run that needs it computes it again. A published table is always kept (the
    /// cache links the published file).
    #[serde(default = "default_cache")]
    pub cache: bool,
    /// Sort keys of the published table; defaults to every column in order.
    #[serde(default)]
    pub sort_by: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Labels (and units) of output columns, for the data dictionary.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, ColumnLabel>,
}

fn default_cache() -> bool {
    true
}

/// A column's label in the data dictionary: a text, or a label with a unit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ColumnLabel {
    Text(String),
    WithUnit {
        label: String,
        #[serde(default)]
        unit: Option<String>,
    },
}

impl ColumnLabel {
    pub fn label(&self) -> &str {
        match self {
            ColumnLabel::Text(t) => t,
            ColumnLabel::WithUnit { label, .. } => label,
        }
    }
    pub fn unit(&self) -> Option<&str> {
        match self {
            ColumnLabel::Text(_) => None,
            ColumnLabel::WithUnit { unit, .. } => unit.as_deref(),
        }
    }
}

/// Keys of [`StageCommon`], removed before a kind's parameters are parsed.
pub const COMMON_STAGE_KEYS: &[&str] = &[
    "name",
    "kind",
    "inputs",
    "publish",
    "cache",
    "sort_by",
    "description",
    "labels",
];

/// A stage as written: its common keys and where it starts in the file.
#[derive(Debug, Clone)]
pub struct StageEntry {
    pub index: usize,
    pub line: u64,
    pub column: u64,
    pub common: StageCommon,
}

impl PipelineSpec {
    /// Reads and parses a pipeline file, collecting every problem.
    pub fn load(path: &Path) -> Result<PipelineSpec, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read pipeline file: {e}"),
                hint: None,
            }])
        })?;
        Self::parse(path, text)
    }

    /// Parses pipeline text; `path` is used for messages and relative folders.
    pub fn parse(path: &Path, text: String) -> Result<PipelineSpec, ConfigErrors> {
        Self::parse_with(path, text, true)
    }

    /// Parses every element by walking the whole document to it (quadratic in the file's
    /// size). The reference the outline-based [`PipelineSpec::parse`] is tested against.
    #[doc(hidden)]
    pub fn parse_walking(path: &Path, text: String) -> Result<PipelineSpec, ConfigErrors> {
        Self::parse_with(path, text, false)
    }

    fn parse_with(path: &Path, text: String, outline: bool) -> Result<PipelineSpec, ConfigErrors> {
        let mut problems = Vec::new();
        let header = match serde_saphyr::from_str::<HeaderSpec>(&text) {
            Ok(h) => Some(h),
            Err(e) => {
                problems.push(yaml_problem(path, &e));
                None
            }
        };
        // Without a readable header the lists cannot be found either.
        let Some(header) = header else {
            return Err(ConfigErrors(problems));
        };
        let outline = if outline {
            Outline::of(&text)
        } else {
            Outline::default()
        };
        let sites = parse_list::<SiteSpec>(path, &text, &outline, "sites", &mut problems);
        let sources = parse_list::<SourceSpec>(path, &text, &outline, "sources", &mut problems);
        let mut stages = Vec::new();
        let stage_texts = outline.isolated_elements(&text, "stages");
        let counted = match &stage_texts {
            Some(t) => Some(t.len()),
            None => list_len(path, &text, "stages", &mut problems),
        };
        let count = counted.unwrap_or(0);
        for index in 0..count {
            let own = stage_texts.as_ref().map(|t| t[index].as_str());
            match parse_element::<Spanned<StageCommon>, _>(&text, own, "stages", index, PhantomData)
            {
                Ok(Some(c)) => stages.push(StageEntry {
                    index,
                    line: c.referenced.line(),
                    column: c.referenced.column(),
                    common: c.value,
                }),
                Ok(None) => {}
                Err(e) => problems.push(yaml_problem(path, &e)),
            }
        }
        // (A walk that failed to count the stages has said so already.)
        if stages.is_empty() && counted == Some(0) {
            problems.push(ConfigProblem {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                message: "the pipeline has no stages".into(),
                hint: Some(
                    "add a `stages:` list; each stage has a name, a kind and its inputs".into(),
                ),
            });
        }
        let stage_texts = match stage_texts {
            Some(t) => t.into_iter().map(Some).collect(),
            None => vec![None; count],
        };
        Ok(PipelineSpec {
            path: path.to_path_buf(),
            text,
            stage_texts,
            header,
            sites,
            sources,
            stages,
            problems,
        })
    }

    /// Parses the kind-specific parameters of stage `index` as `T`.
    pub fn stage_params<T>(&self, index: usize) -> Result<T, ConfigProblem>
    where
        T: for<'de> Deserialize<'de>,
    {
        let own = self.stage_texts.get(index).and_then(Option::as_deref);
        match parse_element(
            &self.text,
            own,
            "stages",
            index,
            ParamsSeed::<T>(PhantomData),
        ) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(ConfigProblem {
                file: self.path.clone(),
                line: 0,
                column: 0,
                message: format!("stage #{index} vanished while parsing its parameters"),
                hint: None,
            }),
            Err(e) => Err(yaml_problem(&self.path, &e)),
        }
    }

    /// Folder that relative paths in the YAML are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// Turns a YAML parse error into a located problem.
pub fn yaml_problem(path: &Path, e: &serde_saphyr::Error) -> ConfigProblem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let rendered = e.to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    // The location is reported separately; drop the parser's own copy of it.
    let message = match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => {
            rest.to_string()
        }
        _ => message,
    };
    ConfigProblem {
        file: path.to_path_buf(),
        line,
        column,
        message,
        hint: hint_for(&rendered),
    }
}

fn hint_for(rendered: &str) -> Option<String> {
    if rendered.contains("unknown field") {
        Some("check the spelling; the README lists every key of each section".into())
    } else if rendered.contains("missing field") {
        Some("this key is required here".into())
    } else if rendered.contains("invalid type") {
        Some("the value has the wrong type for this key".into())
    } else {
        None
    }
}

/// The number of elements of list `key`, found by walking the document. A walk that fails
/// (serde's skipping reads plain scalars as numbers, so `1e999` in a text field stops it) is
/// reported, not taken for an empty list.
fn list_len(
    path: &Path,
    text: &str,
    key: &'static str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<usize> {
    let seed = PathSeed::new(vec![Step::Key(key)], PhantomData::<Vec<IgnoredAny>>);
    match serde_saphyr::with_deserializer_from_str(text, |de| seed.deserialize(de)) {
        Ok(v) => Some(v.map_or(0, |v| v.len())),
        Err(e) => {
            let p = yaml_problem(path, &e);
            if !problems.contains(&p) {
                problems.push(p);
            }
            None
        }
    }
}

fn parse_list<T>(
    path: &Path,
    text: &str,
    outline: &Outline,
    key: &'static str,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<Spanned<T>>
where
    T: for<'de> Deserialize<'de>,
{
    let own = outline.isolated_elements(text, key);
    let count = match &own {
        Some(t) => t.len(),
        None => list_len(path, text, key, problems).unwrap_or(0),
    };
    let mut out = Vec::new();
    for index in 0..count {
        let own = own.as_ref().map(|t| t[index].as_str());
        match parse_element::<Spanned<T>, _>(text, own, key, index, PhantomData) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(e) => problems.push(yaml_problem(path, &e)),
        }
    }
    out
}

/// Parses element `index` of list `key` with `leaf`: from the element's own lines when the
/// outline gave them (`own`), otherwise, or when that fails, by walking the whole document.
fn parse_element<'a, T, S>(
    text: &str,
    own: Option<&str>,
    key: &'static str,
    index: usize,
    leaf: S,
) -> Result<Option<T>, serde_saphyr::Error>
where
    S: for<'de> DeserializeSeed<'de, Value = T> + Clone,
{
    if let Some(own) = own {
        let seed = PathSeed::new(vec![Step::Index(0)], leaf.clone());
        if let Ok(Some(v)) =
            serde_saphyr::with_deserializer_from_str(own, |de| seed.deserialize(de))
        {
            return Ok(Some(v));
        }
    }
    let seed = PathSeed::new(vec![Step::Key(key), Step::Index(index)], leaf);
    serde_saphyr::with_deserializer_from_str(text, |de| seed.deserialize(de))
}

/// The lines of each element of the top-level lists, found in one pass over the parser's events.
#[derive(Debug, Default)]
struct Outline {
    /// Whether the file could be outlined at all.
    trusted: bool,
    /// List key -> for each element, its first line and the line after its last (1-based).
    lists: Vec<(String, Vec<std::ops::Range<usize>>)>,
    /// Lists written in flow style with elements, which share lines: walked to.
    walk: Vec<String>,
}

impl Outline {
    /// The outline of `text`, or an empty one (every element walked) where it cannot be trusted.
    fn of(text: &str) -> Outline {
        Self::read(text).unwrap_or_default()
    }

    fn read(text: &str) -> Option<Outline> {
        use serde_saphyr::granit_parser::{Event, Parser, StructureStyle};
        // Directives change how every node reads; a lone CR breaks lines the way `lines()` does not.
        let lone_cr = text
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\r' && w[1] != b'\n')
            || text.ends_with('\r');
        if lone_cr || text.lines().any(|l| l.starts_with('%')) {
            return None;
        }
        let mut lists: Vec<(String, Vec<std::ops::Range<usize>>)> = Vec::new();
        let mut depth = 0usize; // open collections
        let mut documents = 0;
        let mut key: Option<String> = None; // the last top-level key read
        let mut expect_key = true; // at depth 1: next node is a key (else a value)
        // The list being read: its key, its elements' first lines, whether it is flow style.
        let mut current: Option<(String, Vec<usize>, bool)> = None;
        let mut closing: Option<(String, Vec<usize>)> = None; // ended; waits for its end line
        let mut walk = Vec::new();
        for item in Parser::new_from_str(text) {
            let (event, span) = item.ok()?;
            let line = span.start.line();
            if let Some((name, starts)) = closing.take() {
                // The list ends where the next top-level key starts, or with the file.
                let end = match event {
                    Event::MappingEnd => text.lines().count() + 1,
                    _ => line,
                };
                lists.push((name, ranges(&starts, end)));
            }
            let node_start = matches!(
                event,
                Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
            );
            match &event {
                Event::Alias(_) | Event::Anchor(..) | Event::UnresolvedAlias(_) => return None,
                Event::Scalar(_, _, anchor, _)
                | Event::SequenceStart(_, anchor, _)
                | Event::MappingStart(_, anchor, _)
                    if *anchor != 0 =>
                {
                    return None;
                }
                Event::DocumentStart(..) => {
                    documents += 1;
                    if documents > 1 {
                        return None;
                    }
                }
                _ => {}
            }
            // A new element of the list being read.
            if depth == 2
                && node_start
                && let Some((_, starts, _)) = current.as_mut()
            {
                starts.push(line);
            }
            if depth == 1 && expect_key && !matches!(event, Event::Scalar(..) | Event::MappingEnd) {
                return None; // a key that is not a plain text
            }
            match event {
                Event::MappingStart(style, ..) => {
                    if depth == 0 && style != StructureStyle::Block {
                        return None;
                    }
                    if depth == 1 {
                        expect_key = true;
                    }
                    depth += 1;
                }
                Event::SequenceStart(style, ..) => {
                    if depth == 1 && !expect_key {
                        let name = key.take()?;
                        if lists.iter().any(|(n, _)| *n == name) || walk.contains(&name) {
                            return None; // a key written twice
                        }
                        current = Some((name, Vec::new(), style == StructureStyle::Flow));
                    }
                    if depth == 1 {
                        expect_key = true;
                    }
                    depth += 1;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    depth = depth.checked_sub(1)?;
                    if depth == 1 {
                        match current.take() {
                            // Flow-style elements share lines: walk to them instead.
                            Some((name, starts, true)) if !starts.is_empty() => walk.push(name),
                            Some((name, starts, _)) => closing = Some((name, starts)),
                            None => {}
                        }
                    }
                }
                Event::Scalar(value, ..) if depth == 1 => {
                    if expect_key {
                        key = Some(value.into_owned());
                        expect_key = false;
                    } else {
                        expect_key = true;
                    }
                }
                _ => {}
            }
        }
        // Every element must begin on its own `- ` line.
        let lines: Vec<&str> = text.lines().collect();
        for (_, elements) in &lists {
            for r in elements {
                let first = lines.get(r.start.checked_sub(1)?)?;
                if !first.trim_start().starts_with('-') || r.start >= r.end {
                    return None;
                }
            }
        }
        Some(Outline {
            trusted: true,
            lists,
            walk,
        })
    }

    /// Each element of list `key` as a document of its own: its lines, after the lines before
    /// it turned into comments (same characters and bytes, so every location and offset is that
    /// of the whole file). `None` when the outline does not know the list.
    fn isolated_elements(&self, text: &str, key: &str) -> Option<Vec<String>> {
        if !self.trusted || self.walk.iter().any(|n| n == key) {
            return None;
        }
        // A list the file does not have is empty.
        let Some((_, ranges)) = self.lists.iter().find(|(n, _)| n == key) else {
            return Some(Vec::new());
        };
        let mut starts = vec![0usize];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let at = |line: usize| starts.get(line - 1).copied().unwrap_or(text.len());
        let mut commented = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            match line.as_bytes().first() {
                Some(b'\n' | b'\r') | None => commented.push_str(line),
                Some(b) if b.is_ascii() => {
                    commented.push('#');
                    commented.push_str(&line[1..]);
                }
                Some(_) => return None,
            }
        }
        Some(
            ranges
                .iter()
                .map(|r| {
                    let mut own = String::with_capacity(at(r.end));
                    own.push_str(&commented[..at(r.start)]);
                    own.push_str(&text[at(r.start)..at(r.end)]);
                    own
                })
                .collect(),
        )
    }
}

/// Element line ranges from their first lines and the line after the last element.
fn ranges(starts: &[usize], end: usize) -> Vec<std::ops::Range<usize>> {
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| s..starts.get(i + 1).copied().unwrap_or(end))
        .collect()
}

/// One step of a path into the YAML document.
#[derive(Debug, Clone, Copy)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// Walks the live YAML deserializer down `path` and hands the node there to `leaf`,
/// skipping everything else, so the leaf keeps exact source locations.
struct PathSeed<S> {
    path: Vec<Step>,
    leaf: S,
}

impl<S> PathSeed<S> {
    fn new(path: Vec<Step>, leaf: S) -> Self {
        PathSeed { path, leaf }
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for PathSeed<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.path.is_empty() {
            return self.leaf.deserialize(d).map(Some);
        }
        d.deserialize_any(PathVisitor {
            path: self.path,
            leaf: Some(self.leaf),
        })
    }
}

struct PathVisitor<S> {
    path: Vec<Step>,
    leaf: Option<S>,
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for PathVisitor<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<KeyOrOther>()? {
            match (self.path[0], key, self.leaf.take()) {
                (Step::Key(want), KeyOrOther::Key(k), Some(leaf)) if k == want => {
                    let rest = self.path[1..].to_vec();
                    found = map.next_value_seed(PathSeed::new(rest, leaf))?;
                }
                (_, _, leaf) => {
                    self.leaf = leaf;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut i = 0;
        loop {
            match (self.path[0], self.leaf.take()) {
                (Step::Index(want), Some(leaf)) if want == i => {
                    let rest = self.path[1..].to_vec();
                    match seq.next_element_seed(PathSeed::new(rest, leaf))? {
                        Some(v) => found = v,
                        None => break,
                    }
                }
                (_, leaf) => {
                    self.leaf = leaf;
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            i += 1;
        }
        Ok(found)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A mapping key: a string, or anything else (skipped).
enum KeyOrOther {
    Key(String),
    Other,
}

impl<'de> Deserialize<'de> for KeyOrOther {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrOther;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyOrOther, E> {
                Ok(KeyOrOther::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a stage mapping as `T`, leaving out the common stage keys.
struct ParamsSeed<T>(PhantomData<T>);

impl<T> Clone for ParamsSeed<T> {
    fn clone(&self) -> Self {
        ParamsSeed(PhantomData)
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ParamsSeed<T> {
    type Value = T;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(ParamsVisitor::<T>(PhantomData))
    }
}

struct ParamsVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ParamsVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a stage mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(WithoutCommonKeys(
            map,
        )))
    }
}

struct WithoutCommonKeys<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutCommonKeys<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key::<String>()? {
                None => return Ok(None),
                Some(k) if COMMON_STAGE_KEYS.contains(&k.as_str()) => {
                    self.0.next_value::<IgnoredAny>()?;
                }
                Some(k) => {
                    let de: de::value::StringDeserializer<A::Error> = k.into_deserializer();
                    return seed.deserialize(de).map(Some);
                }
            }
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        key: Vec<String>,
        #[serde(default)]
        #[allow(dead_code)]
        limit: Option<u32>,
    }

    const YAML: &str = "pipeline: t\nsites: []\nsources: []\nstages:\n  - name: a\n    kind: dedupe\n    inputs: [x]\n    key: [s, d]\n  - name: b\n    kind: dedupe\n    key: [s]\n    limit: nope\n";

    #[test]
    fn stage_params_skip_common_keys_and_keep_locations() {
        let spec = PipelineSpec::parse(Path::new("p.yaml"), YAML.into()).unwrap();
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(spec.stages[1].line, 9);
        let p: P = spec.stage_params(0).unwrap();
        assert_eq!(p.key, vec!["s", "d"]);
        let err = spec.stage_params::<P>(1).unwrap_err();
        assert_eq!(err.line, 12, "{err}");
    }

    #[test]
    fn every_bad_list_element_is_reported() {
        let yaml = "pipeline: t\nsites:\n  - name: a\n    colour: red\n    dialect: {}\n  - name: b\n    dialect: {delimiter: 3, bogus: 1}\nstages:\n  - name: s\n    kind: sql\n";
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        let err = &spec.problems;
        assert_eq!(err.len(), 2, "{err:?}");
        assert_eq!(err[0].line, 4);
        assert_eq!(err[1].line, 7);
    }

    #[test]
    fn unknown_top_level_key_is_located() {
        let yaml = "pipeline: t\nstagez: []\nstages:\n  - name: s\n    kind: sql\n";
        let err = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap_err();
        assert_eq!(err.0[0].line, 2, "{err}");
    }

    fn outlined(yaml: &str) -> Option<Vec<(String, Vec<std::ops::Range<usize>>)>> {
        Outline::read(yaml).map(|o| o.lists)
    }

    /// Both parses of `yaml`, rendered: values, locations, problems, parameters of stage 0.
    fn both(yaml: &str) -> (String, String) {
        let render = |r: Result<PipelineSpec, ConfigErrors>| match r {
            Ok(s) => format!(
                "{:?}{:?}{:?}{:?}{:?}",
                s.sites,
                s.sources,
                s.stages,
                s.problems,
                s.stage_params::<P>(0).map_err(|e| e.to_string())
            ),
            Err(e) => format!("{e:?}"),
        };
        (
            render(PipelineSpec::parse(Path::new("p.yaml"), yaml.into())),
            render(PipelineSpec::parse_walking(
                Path::new("p.yaml"),
                yaml.into(),
            )),
        )
    }

    #[test]
    fn outline_finds_each_element_by_its_lines() {
        let lists = outlined(YAML).unwrap();
        assert_eq!(
            lists[0],
            ("sites".to_string(), vec![]),
            "an empty flow list"
        );
        assert_eq!(lists[2], ("stages".to_string(), vec![5..9, 9..13]));
        // A comment between elements, an element at the end without a final line break, the
        // list at the key's own indentation.
        let yaml = "pipeline: t\nstages:\n- name: a\n  kind: dedupe\n  key: [s]\n# next\n- name: b\n  kind: dedupe\n  key: [t]";
        assert_eq!(outlined(yaml).unwrap()[0].1, vec![3..7, 7..10]);
        // Text before the element that is not ASCII keeps its offsets.
        let yaml = "pipeline: t\ndescription: |\n  dose in µg\nstages:\n- name: a\n  kind: dedupe\n  key: [s]\n";
        let (fast, walked) = both(yaml);
        assert_eq!(fast, walked);
        let (fast, walked) = both(yaml);
        assert_eq!(fast, walked);
    }

    #[test]
    fn outline_is_not_trusted_where_elements_share_state_or_lines() {
        // Anchors and aliases reach across elements.
        let anchors = "pipeline: t\nstages:\n  - &a {name: a, kind: dedupe, key: [s]}\n  - *a\n";
        assert!(outlined(anchors).is_none());
        // Directives apply to the whole document.
        assert!(outlined("%YAML 1.2\n---\npipeline: t\nstages: []\n").is_none());
        // A flow-style list with elements: walked, not outlined.
        let flow = "pipeline: t\nstages: [{name: a, kind: dedupe, key: [s]}]\n";
        assert!(outlined(flow).unwrap().is_empty());
        assert!(
            Outline::of(flow)
                .isolated_elements(flow, "stages")
                .is_none()
        );
        // A `-` on a line of its own: the element starts on the next line.
        let dash = "pipeline: t\nstages:\n  -\n    name: a\n    kind: dedupe\n    key: [s]\n";
        assert!(outlined(dash).is_none());
        // Lone CR line breaks.
        assert!(outlined("pipeline: t\rstages: []\r").is_none());
        for yaml in [anchors, flow, dash] {
            let (fast, walked) = both(yaml);
            assert_eq!(fast, walked, "{yaml}");
        }
    }

    #[test]
    fn outlined_and_walked_parses_agree_on_errors_and_locations() {
        for yaml in [
            YAML,
            "pipeline: t\nstages:\n  - name: a\n    kind: dedupe\n    key: nope\n",
            "pipeline: t\r\nstages:\r\n  - name: a\r\n    kind: dedupe\r\n    key: [s]\r\n",
            "pipeline: t\nsites:\n  - name: a\n    colour: red\n    dialect: {}\nstages:\n  - kind: x\n",
        ] {
            let (fast, walked) = both(yaml);
            assert_eq!(fast, walked, "{yaml}");
        }
    }

    #[test]
    fn a_failed_walk_is_reported_not_taken_for_an_empty_list() {
        // Anchors send the parse down the walking path; `1e999` stops serde's skipping.
        let yaml =
            "pipeline: t\ndata_dir: 1e999\nstages:\n  - &a {name: a, kind: dedupe, key: [s]}\n";
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        assert_eq!(spec.header.data_dir.as_deref(), Some("1e999"));
        assert_eq!(spec.problems.len(), 1, "{:?}", spec.problems);
        assert_eq!((spec.problems[0].line, spec.problems[0].column), (2, 11));
        assert!(
            spec.problems[0].message.contains("1e999"),
            "{:?}",
            spec.problems
        );
        // Without anchors the outline parses it.
        let yaml = "pipeline: t\ndata_dir: 1e999\nstages:\n  - {name: a, kind: dedupe, key: [s]}\n";
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        assert!(
            spec.problems.is_empty() && spec.stages.len() == 1,
            "{:?}",
            spec.problems
        );
    }
}
