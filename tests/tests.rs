//! Integration tests, compiled as one binary. Each module drives studyflow on fixture folders.

mod workdir;

mod bad_input;
mod config_errors;
mod diff;
mod fixture_two_sites;
mod generated_cohort;
mod interop;
mod nightly;
mod phases;
mod publish_atomic;
mod row_fate_property;
