//! Hostile input and a hostile machine (issue 8): each case ends in a clear message or in
//! rejects with the right rule and line, never a panic, and never touches the published run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::*;

use crate::workdir::*;

/// A copy of the two-site fixture with `tests/fixtures/hostile/<name>` dropped in as `rel`.
fn with_hostile(name: &str, rel: &str) -> Workdir {
    let w = Workdir::from_fixture("two_sites");
    let bytes = std::fs::read(fixture("hostile").join(name)).unwrap();
    w.write(rel, &bytes);
    w
}

/// (SRCLINE, RULE, COLUMN, RAWVALUE, REASON) of the rejects of one raw file.
fn rejects_of(w: &Workdir, file: &str) -> Vec<(i64, String, String, String, String)> {
    let df = w.table("rejects");
    let col = |c: &str| strs(&df, c);
    let (files, rules, columns, raws, reasons) = (
        col("SRCFILE"),
        col("RULE"),
        col("COLUMN"),
        col("RAWVALUE"),
        col("REASON"),
    );
    let lines = df.column("SRCLINE").unwrap().i64().unwrap().clone();
    (0..df.height())
        .filter(|&i| files[i] == file)
        .map(|i| {
            (
                lines.get(i).unwrap(),
                rules[i].clone(),
                columns[i].clone(),
                raws[i].clone(),
                reasons[i].clone(),
            )
        })
        .collect()
}

/// (SRCLINE, RULE) of the rejects of one raw file.
fn rules_of(w: &Workdir, file: &str) -> Vec<(i64, String)> {
    rejects_of(w, file)
        .into_iter()
        .map(|(l, r, ..)| (l, r))
        .collect()
}

/// Lines of `file` that made it into the published `table`.
fn accepted_lines(w: &Workdir, table: &str, file: &str) -> Vec<i64> {
    let df = w.table(table);
    let files = strs(&df, "SRCFILE");
    let lines = df.column("SRCLINE").unwrap().i64().unwrap().clone();
    let mut out: Vec<i64> = (0..df.height())
        .filter(|&i| files[i] == file)
        .map(|i| lines.get(i).unwrap())
        .collect();
    out.sort();
    out
}

/// Where `out/current` points and the bytes of every file in it.
fn published(w: &Workdir) -> (PathBuf, BTreeMap<String, Vec<u8>>) {
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

const DIARY: &str = "nih/diary_2017-07-31.csv";

#[test]
fn nul_bytes_inside_cells_reject_their_rows_only() {
    let w = with_hostile("nul_bytes.csv", &format!("data/{DIARY}"));
    assert_exit(&w.run_pipeline(), 0);
    assert_eq!(
        rules_of(&w, DIARY),
        [
            (3, "parse".into()),
            (4, "subject_id".into()),
            (5, "columns".into())
        ]
    );
    // NUL is escaped in the reason, not written raw into a message.
    let reason = &rejects_of(&w, DIARY)[0].4;
    assert!(
        reason.contains("`1\\0`") && !reason.contains('\0'),
        "{reason}"
    );
    assert_eq!(accepted_lines(&w, "diary", DIARY), [2, 6]);
}

#[test]
fn a_file_of_nul_bytes_is_called_binary() {
    let w = Workdir::from_fixture("two_sites");
    w.write(&format!("data/{DIARY}"), &[0u8; 8192]);
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains(DIARY) && err.contains("NUL bytes"), "{err}");
    assert!(!err.contains('\0') && err.len() < 2000, "{err}");
}

#[test]
fn regression_lone_cr_records_shared_a_line_and_escaped_dedupe() {
    // A lone CR ended a record but not a line: two identical rows got the same SRCLINE and
    // both survived dedupe into the published diary.
    let w = with_hostile("mixed_line_endings.csv", &format!("data/{DIARY}"));
    assert_exit(&w.run_pipeline(), 0);
    assert_eq!(accepted_lines(&w, "diary", DIARY), [2, 5, 6]);
    assert_eq!(rules_of(&w, DIARY), [(4, "parse".into())]);
    let dups = w.table("duplicates");
    let files = strs(&dups, "SRCFILE");
    let i = files.iter().position(|f| f == DIARY).unwrap();
    assert_eq!(
        (
            strs(&dups, "SRCLINE")[i].as_str(),
            strs(&dups, "FATE")[i].as_str(),
            strs(&dups, "KEPTLINE")[i].as_str()
        ),
        ("3", "collapsed", "2")
    );
}

#[test]
fn latin1_bytes_in_a_utf8_site_are_encoding_rejects() {
    let file = "nih/subjects_2017-07-31.csv";
    let w = with_hostile("latin1_in_utf8.csv", &format!("data/{file}"));
    assert_exit(&w.run_pipeline(), 0);
    let rejects = rejects_of(&w, file);
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    let (line, rule, column, _, reason) = &rejects[0];
    assert_eq!(
        (*line, rule.as_str(), column.as_str()),
        (2, "encoding", "comment")
    );
    assert!(reason.contains("not valid UTF-8"), "{reason}");
    assert_eq!(accepted_lines(&w, "subjects", file), [3]);
}

#[test]
fn regression_a_bom_in_the_middle_rejected_the_rows_after_it() {
    // Two exports joined into one file: the second header is one reject, and the BOM in
    // front of the next record no longer makes its subject id unreadable.
    let w = with_hostile("bom_in_middle.csv", &format!("data/{DIARY}"));
    assert_exit(&w.run_pipeline(), 0);
    let rejects = rejects_of(&w, DIARY);
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!((rejects[0].0, rejects[0].1.as_str()), (3, "columns"));
    assert!(rejects[0].4.contains("repeats the header"), "{rejects:?}");
    assert_eq!(accepted_lines(&w, "diary", DIARY), [2, 4, 5]);
}

#[test]
fn duplicate_header_names_are_a_clear_error() {
    let w = with_hostile("duplicate_headers.csv", &format!("data/{DIARY}"));
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(DIARY) && err.contains("`fever` matches several headers (fever, Fever)"),
        "{err}"
    );
    assert!(!w.path("out/current").exists());
}

#[test]
fn regression_a_column_count_change_lost_the_delimiters_of_rawvalue() {
    let w = with_hostile("column_count_changes.csv", &format!("data/{DIARY}"));
    assert_exit(&w.run_pipeline(), 0);
    let rejects = rejects_of(&w, DIARY);
    let got: Vec<(i64, &str, &str)> = rejects
        .iter()
        .map(|(l, r, _, raw, _)| (*l, r.as_str(), raw.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (4, "columns", "C01,2014-04-03,1,1,0"),
            (5, "columns", "C01,2014-04-04,2,1,0"),
            (6, "columns", "C01,2014-04-05,0,1,1"),
            (7, "columns", "C01,2014-04-06,1"),
        ]
    );
    assert_eq!(rejects[0].4, "the record has 5 fields but the header has 4");
    assert_eq!(rejects[3].4, "the record has 3 fields but the header has 4");
    assert_eq!(accepted_lines(&w, "diary", DIARY), [2, 3]);
}

#[test]
fn regression_a_10_mb_single_line_made_a_10_mb_error_message() {
    // The whole line was taken for a header and printed, and compared by edit distance.
    let w = Workdir::from_fixture("two_sites");
    w.write(&format!("data/{DIARY}"), &vec![b'x'; 10 << 20]);
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.len() < 2000, "message of {} bytes", err.len());
    assert!(
        err.contains(DIARY) && err.contains("column `subject` not found"),
        "{err}"
    );
    assert!(err.contains("(10485760 characters)"), "{err}");
}

#[test]
fn a_10_mb_cell_is_rejected_with_a_short_reason() {
    let w = Workdir::from_fixture("two_sites");
    let mut csv = b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,".to_vec();
    csv.extend(std::iter::repeat_n(b'7', 10 << 20));
    csv.extend_from_slice(b",1\nC01,2014-04-02,1,1\n");
    w.write(&format!("data/{DIARY}"), &csv);
    assert_exit(&w.run_pipeline(), 0);
    let rejects = rejects_of(&w, DIARY);
    assert_eq!((rejects[0].0, rejects[0].1.as_str()), (2, "parse"));
    assert!(rejects[0].4.len() < 200, "{}", rejects[0].4);
    assert_eq!(accepted_lines(&w, "diary", DIARY), [3]);
}

#[test]
fn a_file_vanishing_between_planning_and_reading_is_a_clear_error() {
    let w = Workdir::from_fixture("two_sites");
    let plan = studyflow::cli::load_plan(&w.path("pipeline.yaml")).unwrap();
    let data_dir = plan.data_dir(None);
    let spec = &plan
        .spec
        .sources
        .iter()
        .find(|s| s.value.name == "diary")
        .unwrap()
        .value;
    let source = studyflow::source::resolve_source(spec, &plan.sites, &data_dir).unwrap();
    std::fs::remove_file(w.path("data/nih/diary_2017-06-30.csv")).unwrap();
    let base_dir = plan.spec.base_dir();
    let sources = [source];
    let ctx = studyflow::stages::StageCtx {
        name: "diary_raw",
        spec: &plan.spec,
        run_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
        data_dir: &data_dir,
        base_dir: &base_dir,
        sources: &sources,
    };
    let stage = &plan.stages[plan.stage_id("diary_raw").unwrap()];
    let inputs = studyflow::stages::Inputs { tables: Vec::new() };
    let Err(e) = stage.kind.stage().run(&ctx, &inputs) else {
        panic!("reading a deleted file succeeded");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains("diary_2017-06-30.csv") && msg.contains("is gone now"),
        "{msg}"
    );
    assert_eq!(
        studyflow::error::exit_kind(&e),
        studyflow::error::ExitKind::Data
    );
}

#[cfg(unix)]
#[test]
fn regression_a_symlink_loop_in_the_input_folder_was_skipped_silently() {
    let w = Workdir::from_fixture("two_sites");
    std::os::unix::fs::symlink(
        "diary_2017-08-31.csv",
        w.path("data/nih/diary_2017-08-31.csv"),
    )
    .unwrap();
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("nih/diary_2017-08-31.csv") && err.contains("cannot be opened"),
        "{err}"
    );
    assert!(err.contains("symbolic links"), "{err}");
}

#[cfg(unix)]
#[test]
fn regression_a_directory_link_loop_read_one_file_many_times() {
    // With a recursive glob, `nih/loop -> .` made every diary file count once per level.
    let w = Workdir::from_fixture("two_sites");
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml"))
        .unwrap()
        .replace("files: \"diary_*.csv\"", "files: \"**/diary_*.csv\"");
    w.write("pipeline.yaml", yaml.as_bytes());
    std::os::unix::fs::symlink(".", w.path("data/nih/loop")).unwrap();
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("same file") && err.contains("nih/loop/diary_2017-06-30.csv"),
        "{err}"
    );
}

/// A mount made for one test, undone when the test ends (even by a failed assertion).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        let opts = format!("size={size}");
        mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"], at)?;
        Ok(Mount(at.to_path_buf()))
    }

    fn read_only(at: &Path) -> Result<Mount, String> {
        mount(&["--bind"], at)?;
        let m = Mount(at.to_path_buf());
        mount(&["-o", "remount,bind,ro"], at)?;
        Ok(m)
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let mut c = Command::new("mount");
    c.args(args);
    if args.contains(&"--bind") {
        c.arg(at);
    }
    let o = c.arg(at).output().map_err(|e| format!("mount: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Permissions put back when the test ends, so the temporary folder can be removed.
struct Writable(Vec<PathBuf>);

impl Drop for Writable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for p in &self.0 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn expect_unwritable_out(o: &Output) {
    assert_exit(o, 3);
    let err = stderr(o);
    assert!(
        err.contains("I/O error on")
            && (err.contains("Read-only file system") || err.contains("Permission denied")),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_read_only_output_folder_is_a_clear_error_and_keeps_current() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let before = published(&w);
    w.write(
        &format!("data/{DIARY}"),
        b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,1,1\n",
    );
    let out = w.path("out");
    let (mut _guard, mut _mount) = (None, None);
    if is_root() {
        // Permissions do not stop root: a read-only bind mount does.
        _mount = match Mount::read_only(&out) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("skipped: running as root and cannot mount read-only here ({e})");
                return;
            }
        };
    } else {
        let dirs = vec![out.clone(), out.join("runs")];
        for d in &dirs {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        _guard = Some(Writable(dirs));
    }
    let o = w.run_pipeline();
    expect_unwritable_out(&o);
    assert_eq!(published(&w), before, "the published run is untouched");
}

#[cfg(unix)]
#[test]
fn a_full_disk_fails_cleanly_and_the_next_run_recovers() {
    use std::io::Write;
    let w = Workdir::from_fixture("two_sites");
    let out = w.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let _mount = match Mount::tmpfs(&out, "4m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs here ({e})");
            return;
        }
    };
    assert_exit(&w.run_pipeline(), 0);
    let before = published(&w);
    w.write(
        &format!("data/{DIARY}"),
        b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,1,1\n",
    );
    // Fill the disk, then free two pages: enough to take the lock, not to write the tables.
    let filler = out.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let page = [0u8; 4096];
    while f.write_all(&page).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(2 * 4096) / 4096 * 4096)
        .unwrap();
    drop(f);

    let o = w.run_pipeline();
    assert_exit(&o, 3);
    let err = stderr(&o);
    let error = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert_eq!(error.matches("No space left on device").count(), 1, "{err}");
    assert_eq!(published(&w), before, "the published run is untouched");
    // The failed run's folder keeps what it finished, not the half-written files.
    for run in std::fs::read_dir(out.join("runs")).unwrap().flatten() {
        for f in std::fs::read_dir(run.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp-"),
                "{} left in {}",
                name,
                run.path().display()
            );
        }
    }

    std::fs::remove_file(&filler).unwrap();
    let o = w.run_pipeline();
    assert_exit(&o, 0);
    let after = published(&w);
    assert_ne!(after.0, before.0);
    let diary =
        ParquetReader::new(std::fs::File::open(w.path("out/current/diary.parquet")).unwrap())
            .finish()
            .unwrap();
    assert!(strs(&diary, "SRCFILE").iter().any(|f| f == DIARY));
}
