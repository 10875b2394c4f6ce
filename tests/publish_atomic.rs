//! Runs publish atomically: a failed or killed run leaves `out/current` as it was, and a
//! second concurrent run on the same output folder is refused, naming the holder.

use std::collections::BTreeMap;

use crate::workdir::*;

fn published(w: &Workdir) -> (std::path::PathBuf, BTreeMap<String, Vec<u8>>) {
    let target = std::fs::read_link(w.path("out/current")).unwrap();
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(w.path("out/current")).unwrap() {
        let e = e.unwrap();
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    (target, files)
}

#[test]
fn a_run_failing_midway_leaves_current_untouched() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let before = published(&w);
    // Change an input so the next run would publish different tables.
    w.write(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,1,1\n",
    );
    for point in ["stage:visits", "write:visits", "manifest", "publish"] {
        let o = w
            .cmd()
            .args(["run", "pipeline.yaml", "--run-date", "2026-11-25"])
            .env("STUDYFLOW_FAILPOINT", point)
            .output()
            .unwrap();
        assert_exit(&o, 3);
        assert!(stderr(&o).contains(point), "{}", stderr(&o));
        assert_eq!(
            published(&w),
            before,
            "failpoint {point} changed the published run"
        );
    }
    // A stage that panics (a bug) fails the run with an internal error naming it, while the
    // stages beside it finish: the run neither hangs nor publishes.
    let o = w
        .cmd()
        .args(["run", "pipeline.yaml", "--run-date", "2026-11-25"])
        .env("STUDYFLOW_FAILPOINT", "stage:visits")
        .env("STUDYFLOW_FAILPOINT_ACTION", "panic")
        .output()
        .unwrap();
    // (Not `assert_exit`: that refuses any panic, and this one is deliberate.)
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stage `visits` panicked: failpoint stage:visits"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        published(&w),
        before,
        "a panicking stage changed the published run"
    );
    assert_exit(&w.run_pipeline(), 0);
    assert_ne!(published(&w).0, before.0, "a good run publishes again");
}

#[test]
fn a_killed_run_leaves_current_untouched_and_the_next_run_recovers() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let before = published(&w);
    for point in ["write:subjects", "publish"] {
        let o = w
            .cmd()
            .args(["run", "pipeline.yaml", "--run-date", "2026-11-25"])
            .env("STUDYFLOW_FAILPOINT", point)
            .env("STUDYFLOW_FAILPOINT_ACTION", "abort")
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert_eq!(published(&w), before);
    }
    let o = w.run_pipeline();
    assert_exit(&o, 0);
    assert!(
        stderr(&o).contains("did not finish"),
        "stale lock noticed: {}",
        stderr(&o)
    );
    let partial = std::fs::read_dir(w.path("out/runs")).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")
    });
    assert_eq!(partial.count(), 0, "unfinished run folders are swept");
}

#[test]
fn a_second_concurrent_run_is_refused_naming_the_holder() {
    let w = Workdir::from_fixture("two_sites");
    std::fs::create_dir_all(w.path("out")).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(w.path("out/.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(
        w.path("out/.lock"),
        b"pid 4242 on testhost since 2026-11-25T00:00:00Z",
    )
    .unwrap();
    let o = w.run_pipeline();
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains("locked by another studyflow run") && err.contains("pid 4242"),
        "{err}"
    );
    drop(lock);
    assert_exit(&w.run_pipeline(), 0);
}
