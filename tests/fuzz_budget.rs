//! The budget of the property-based fuzz targets: a few cases in `make test`, a set time per
//! target in `make fuzz` (`STUDYFLOW_FUZZ_SECONDS`), with the executions counted and printed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Cases run per seed when fuzzing for a set time.
const CHUNK: u32 = 256;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `property` on values of `strategy`: `cases` of them (or `PROPTEST_CASES`), or, when
/// `STUDYFLOW_FUZZ_SECONDS` is set, as many as fit in that time. `STUDYFLOW_FUZZ_SEED` replays
/// a run. A failure panics with the shrunk input and the seed, to be made a regression test.
pub fn fuzz<S>(
    target: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let budget = env_u64("STUDYFLOW_FUZZ_SECONDS").map(Duration::from_secs);
    let cases = env_u64("PROPTEST_CASES").map_or(cases, |n| n as u32);
    let mut seed = env_u64("STUDYFLOW_FUZZ_SEED").unwrap_or_else(rand::random);
    let first_seed = seed;
    let executions = AtomicU64::new(0);
    let started = Instant::now();
    loop {
        let config = Config {
            cases: if budget.is_some() { CHUNK } else { cases },
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |v| {
            executions.fetch_add(1, Ordering::Relaxed);
            property(v)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => panic!(
                "fuzz {target}: {reason}\nminimal input: {input:#?}\nseed: {seed} \
                 (STUDYFLOW_FUZZ_SEED={seed} replays it)"
            ),
            Err(TestError::Abort(reason)) => panic!("fuzz {target} aborted: {reason}"),
        }
        match budget {
            Some(b) if started.elapsed() < b => seed = seed.wrapping_add(1),
            _ => break,
        }
    }
    println!(
        "fuzz {target}: {} executions in {:.1} s, no failure (seed {first_seed})",
        executions.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// Where a mutation applies: a fraction of the input's length.
pub fn at(fraction: f64, len: usize) -> usize {
    ((fraction.clamp(0.0, 1.0) * len as f64) as usize).min(len)
}
