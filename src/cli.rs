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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline and publish its tables.
    Run {
        /// Pipeline YAML (default: pipelines/reference.yaml).
        pipeline: Option<PathBuf>,
        /// Folder of raw exports (overrides the YAML's data_dir).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output folder (overrides the YAML's out_dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Date of the run (YYYY-MM-DD); later dates are implausible. Default: today.
        #[arg(long)]
        run_date: Option<chrono::NaiveDate>,
    },
    /// Show the stages in execution order without reading data.
    Plan { pipeline: Option<PathBuf> },
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
        Command::Run {
            pipeline,
            data,
            out,
            run_date,
        } => {
            let plan = load_plan(&pipeline_path(pipeline))?;
            let opts = RunOptions {
                data_dir: data,
                out_dir: out,
                run_date,
                threads,
            };
            let report = run::run(&plan, &opts, &log)?;
            log.info(&format!("published {}", report.run_dir.display()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { pipeline } => {
            let plan = load_plan(&pipeline_path(pipeline))?;
            print!("{}", explain(&plan));
            Ok(ExitCode::SUCCESS)
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
            print!("{}", crate::inspect::describe(&path, rows)?);
            Ok(ExitCode::SUCCESS)
        }
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

/// The plan as text: stages in order, with kind, inputs and wave.
pub fn explain(plan: &Plan) -> String {
    let mut s = format!(
        "pipeline {} ({} stages in {} waves)\n",
        plan.spec.header.pipeline,
        plan.stages.len(),
        plan.waves.len()
    );
    for (w, wave) in plan.waves.iter().enumerate() {
        for &id in wave {
            let st = &plan.stages[id];
            let from = if let Some(src) = st.kind.stage().reads_source() {
                format!("source {src}")
            } else {
                st.inputs.join(", ")
            };
            s.push_str(&format!(
                "  wave {w}: {:<28} {:<20} <- {}{}\n",
                st.name,
                st.kind_name,
                from,
                if st.publish { "  [published]" } else { "" }
            ));
        }
    }
    s
}
