//! Integration tests, compiled as one binary. Each module drives studyflow on fixture folders.

mod workdir;

mod bad_input;
mod config_errors;
mod crash;
mod determinism;
mod dictionary;
mod diff;
mod fixture_two_sites;
mod fuzz_budget;
mod fuzz_csv;
mod fuzz_spec;
mod generated_cohort;
mod hostile;
mod identifying;
mod interop;
mod nightly;
mod phases;
mod publish_atomic;
mod row_fate_property;
mod subject_batches;
