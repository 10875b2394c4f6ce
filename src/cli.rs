//! The command line: flags as close to what the person typed as possible, turned into calls
//! of the library. `main` stays thin; every command returns an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::error::ConfigErrors;
use crate::log::{Log, LogFormat};
use crate::plan::{self, Plan};
use crate::run::{self, RunOptions};
use crate::spec::PipelineSpec;

/// The pipeline used when none is named: the shipped reference pipeline.
pub const DEFAULT_PIPELINE: &str = "pipelines/reference.yaml";

/// studyflow: clinical site exports in, analysis-ready Parquet out.
#[derive(Debug, Parser)]
#[command(name = "studyflow", version, about, long_about = None)]
pub struct Args {
    /// Print only warnings and errors.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Threads for everything (stages, files, polars); default: all cores.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Log lines as plain text or JSON (one object per line, on stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What `run` and `plan` share: where data and output are, the run date, what to force.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Pipeline YAML (default: pipelines/reference.yaml).
    pub pipeline: Option<PathBuf>,
    /// Folder of raw exports (overrides the YAML's data_dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder (overrides the YAML's out_dir); the cache is its `cache/` folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Date of the run (YYYY-MM-DD); later dates are implausible. Default: today.
    #[arg(long)]
    pub run_date: Option<chrono::NaiveDate>,
    /// Run this stage and everything downstream of it whatever the cache holds;
    /// `+STAGE` also runs everything upstream. Repeatable.
    #[arg(long, value_name = "STAGE")]
    pub select: Vec<String>,
    /// Run every stage and parse every file whatever the cache holds.
    #[arg(long)]
    pub force: bool,
    /// Run the stages after the ingests on about N subjects at a time, to bound memory on a
    /// large cohort; every such stage then runs (no stage is reused).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_subjects: Option<u64>,
}

/// How `diff` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline and publish its tables; stages whose inputs did not change are reused.
    Run(RunArgs),
    /// Say, without running, which stages would run and why, and which would be reused.
    Plan(RunArgs),
    /// Compare two runs' tables (or two Parquet files) by key. Exit 0 equal, 1 different,
    /// 2 usage error or unreadable input.
    Diff {
        /// A run: `current`, `previous`, a run id, a run folder; or a .parquet file.
        a: String,
        /// The run (or .parquet file) to compare with.
        b: String,
        /// Compare only this table.
        table: Option<String>,
        /// Key columns (comma-separated); default: the table's key recorded in the manifest.
        #[arg(long, value_delimiter = ',')]
        key: Vec<String>,
        /// Numbers whose absolute difference is at most this are equal.
        #[arg(long, default_value_t = 0.0)]
        tolerance: f64,
        /// Example rows shown per kind of difference.
        #[arg(long, default_value_t = 5)]
        examples: usize,
        /// The report as text for a person, or as one JSON object for scripts.
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
        /// Pipeline whose output folder holds the runs.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Output folder (overrides the pipeline's out_dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check pipeline YAML files; every problem is listed with file, line and column.
    Validate {
        /// Pipeline files (default: pipelines/reference.yaml).
        pipelines: Vec<PathBuf>,
    },
    /// Write synthetic site exports (several dialects, realistic dirt) and their ground truth.
    Generate {
        /// Output folder (one subfolder per site, and truth/).
        #[arg(long)]
        out: PathBuf,
        /// Number of subjects (split 10:4:4 into CANDLE, SAVI and other).
        #[arg(long, default_value_t = 18)]
        subjects: usize,
        /// Mean years on treatment.
        #[arg(long, default_value_t = 3)]
        years: u32,
        /// Number of sites (the built-in dialects are cycled).
        #[arg(long, default_value_t = 3)]
        sites: usize,
        /// Random seed: same seed and options, byte-identical files.
        #[arg(long, default_value_t = 2018)]
        seed: u64,
    },
    /// Show a published table: schema, rows, provenance and the first rows.
    Inspect {
        /// A table name in the current run, or a path to a Parquet file.
        table: String,
        /// Pipeline whose output folder to look in.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Output folder (overrides the pipeline's out_dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How many rows to show.
        #[arg(long, default_value_t = 10)]
        rows: usize,
        /// Show the values of identifying columns (withheld by default).
        #[arg(long)]
        show_identifying: bool,
    },
}

/// Parses the arguments, runs the command, returns the exit code.
pub fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        let n = n.max(1);
        // Before polars starts its pool: it reads this once.
        // SAFETY: called at start-up, before any other thread exists.
        unsafe { std::env::set_var("POLARS_MAX_THREADS", n.to_string()) };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    let log = Log::new(args.log_format, args.quiet);
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    match args.command {
        Command::Run(args) => {
            let plan = load_plan(&pipeline_path(args.pipeline.clone()))?;
            let report = run::run(&plan, &run_options(args, threads), &log)?;
            log.info(&format!("published {}", report.run_dir.display()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => {
            let plan = load_plan(&pipeline_path(args.pipeline.clone()))?;
            print!("{}", explain(&plan, &run_options(args, threads))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            a,
            b,
            table,
            key,
            tolerance,
            examples,
            format,
            pipeline,
            out,
        } => {
            let opts = crate::diff::DiffOptions {
                keys: key,
                tolerance,
                examples,
            };
            let compared = (|| -> anyhow::Result<crate::diff::DiffReport> {
                let out_dir = match out {
                    Some(o) => o,
                    None if pipeline.is_some() || Path::new(DEFAULT_PIPELINE).is_file() => {
                        load_plan(&pipeline_path(pipeline))?.out_dir(None)
                    }
                    None => PathBuf::from("out"),
                };
                let a = crate::diff::Side::resolve(&a, &out_dir)?;
                let b = crate::diff::Side::resolve(&b, &out_dir)?;
                crate::diff::diff(&a, &b, table.as_deref(), &opts)
            })();
            match compared {
                Ok(report) => {
                    match format {
                        DiffFormat::Text => print!("{}", report.text()),
                        DiffFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&report.json())?)
                        }
                    }
                    Ok(ExitCode::from(if report.equal { 0 } else { 1 }))
                }
                // Like diff(1): 2 is trouble (a usage error or an unreadable input).
                Err(e) => {
                    log.error(&format!("{e:#}"));
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Validate { pipelines } => {
            let files = if pipelines.is_empty() {
                vec![PathBuf::from(DEFAULT_PIPELINE)]
            } else {
                pipelines
            };
            let mut all = ConfigErrors::default();
            for f in &files {
                match load_plan(f) {
                    Ok(p) => log.info(&format!(
                        "{}: ok ({} sites, {} sources, {} stages)",
                        f.display(),
                        p.sites.len(),
                        p.spec.sources.len(),
                        p.stages.len()
                    )),
                    Err(e) => match e.downcast::<ConfigErrors>() {
                        Ok(c) => all.0.extend(c.0),
                        Err(other) => return Err(other),
                    },
                }
            }
            if all.0.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(all.into())
            }
        }
        Command::Generate {
            out,
            subjects,
            years,
            sites,
            seed,
        } => {
            let opts = crate::generate::GenerateOptions {
                out,
                subjects,
                years,
                sites,
                seed,
                ..Default::default()
            };
            let summary = crate::generate::generate(&opts)?;
            if !log.quiet {
                print!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            table,
            pipeline,
            out,
            rows,
            show_identifying,
        } => {
            let path = if table.ends_with(".parquet") || Path::new(&table).is_file() {
                PathBuf::from(&table)
            } else {
                let plan = load_plan(&pipeline_path(pipeline))?;
                let out_dir = plan.out_dir(out.as_ref());
                let current = crate::publish::current_run(&out_dir).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no published run in {}: run the pipeline first",
                        out_dir.display()
                    )
                })?;
                current.join(format!("{table}.parquet"))
            };
            print!(
                "{}",
                crate::inspect::describe(&path, rows, show_identifying)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_options(args: RunArgs, threads: usize) -> RunOptions {
    RunOptions {
        data_dir: args.data,
        out_dir: args.out,
        run_date: args.run_date,
        threads,
        force: args.force,
        batch_subjects: args.batch_subjects.map(|n| n as usize),
        select: args.select,
    }
}

fn pipeline_path(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| PathBuf::from(DEFAULT_PIPELINE))
}

/// Parses and checks a pipeline file.
pub fn load_plan(path: &Path) -> anyhow::Result<Plan> {
    let spec = PipelineSpec::load(path)?;
    Ok(plan::build(spec)?)
}

/// The plan as text: every stage in execution order, whether it would run or be reused,
/// and why. Reads no data beyond file hashes.
pub fn explain(plan: &Plan, opts: &RunOptions) -> anyhow::Result<String> {
    let preview = crate::reuse::preview_run(plan, opts)?;
    let to_run = preview
        .lines
        .iter()
        .filter(|l| l.decision.action == crate::reuse::Action::Run)
        .count();
    let mut s = format!(
        "pipeline {}: {} stages in {} waves; {} to run, {} to reuse\n",
        plan.spec.header.pipeline,
        plan.stages.len(),
        plan.waves.len(),
        to_run,
        plan.stages.len() - to_run
    );
    s.push_str(&format!(
        "compared with {}; cache {}\n",
        preview
            .previous_run
            .as_deref()
            .map(|r| format!("run {r}"))
            .unwrap_or_else(|| "no earlier run".into()),
        preview.cache_dir.display()
    ));
    let wave_of = |id: usize| plan.waves.iter().position(|w| w.contains(&id)).unwrap_or(0);
    let mut lines: Vec<&crate::reuse::PlanLine> = preview.lines.iter().collect();
    lines.sort_by_key(|l| (wave_of(l.stage), l.stage));
    for l in lines {
        let st = &plan.stages[l.stage];
        let files = match l.files {
            Some((parse, of)) if l.decision.action == crate::reuse::Action::Run => {
                format!(" [{parse} of {of} files to parse]")
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "  wave {:>2}: {:<28} {:<20} {:<5}  {}{}{}\n",
            wave_of(l.stage),
            st.name,
            st.kind_name,
            l.decision.action.as_str(),
            l.decision.reasons.join("; "),
            files,
            if st.publish { "  [published]" } else { "" }
        ));
    }
    if let Some(size) = opts.batch_subjects {
        s.push_str(&match crate::execute::batch_plan(plan) {
            Ok(_) if to_run > 0 => format!(
                "subject batches of {size}: every stage after the ingests runs, batch by batch\n"
            ),
            Ok(_) => format!("subject batches of {size}: nothing after the ingests to run\n"),
            Err(why) => format!("subject batches: not possible, {why}; the run goes whole\n"),
        });
    }
    Ok(s)
}
