//! `cargo xtask mutants [--crate NAME]... [--list] [-- CARGO_MUTANTS_ARGS]`: mutation
//! testing of the crates that carry the delivery contract, with cargo-mutants.
//!
//! Each target is a crate (or some of its files) with the tests that defend it. A
//! mutant is *caught* when a test fails, *missed* when every test still passes. Missed
//! mutants are triaged: a test is added that kills it, or it is listed as equivalent
//! (no test can tell it from the code) in `.cargo/mutants.toml`'s `exclude_re`, one
//! entry per mutant with its reason, so it is not generated at all.
//!
//! Results go to `target/mutants/<crate>/mutants.out/` (cargo-mutants' own layout:
//! `outcomes.json`, `missed.txt`, `caught.txt`, `timeout.txt`, `unviable.txt`, logs);
//! the summary table is printed and written into RELIABILITY.md between the
//! `mutants:begin` and `mutants:end` markers (the row of each crate run is replaced;
//! not after a run narrowed by extra cargo-mutants arguments).
//! The task fails if a mutant is missed or a baseline test run fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::root;

/// The cargo-mutants release the project runs; installed if another (or none) is found.
const VERSION: &str = "27.1.0";

const BEGIN: &str = "<!-- mutants:begin -->";
const END: &str = "<!-- mutants:end -->";

/// A crate, or some of its files, and the tests run against each of its mutants.
struct Target {
    package: &'static str,
    /// Files to mutate, relative to the workspace root; empty for the whole crate.
    files: &'static [&'static str],
    /// What the row of the table calls the scope.
    scope: &'static str,
    /// Arguments to `cargo test` (after cargo-mutants' `--`).
    test_args: &'static [&'static str],
    /// Environment for the test runs.
    env: &'static [(&'static str, &'static str)],
    /// Slow tests left out of a first pass over every mutant; what survives it is
    /// tested again with every test (`--iterate`). Leaving tests out can only let more
    /// mutants through the first pass, never count one as caught that the full set
    /// would miss.
    first_pass_skips: &'static [&'static str],
}

const TARGETS: &[Target] = &[
    Target {
        package: "person-delivery",
        files: &[],
        scope: "whole crate (core, config, breaker gate)",
        // Unit tests, and the simulations over 5,000 schedules each (about a second)
        // plus their regression seeds; doc-tests add build time and no checks the unit
        // tests lack.
        test_args: &["--lib", "--tests"],
        env: &[("SIM_SEEDS", "5000"), ("GROUP_SIM_SEEDS", "5000")],
        first_pass_skips: &[],
    },
    Target {
        package: "person-retry",
        files: &[
            "crates/person-retry/src/breaker_config.rs",
            "crates/person-retry/src/breaker.rs",
        ],
        scope: "`breaker_config.rs`, `breaker.rs`",
        test_args: &["--lib", "--tests"],
        env: &[("PROPTEST_CASES", "64")],
        first_pass_skips: &[],
    },
    Target {
        package: "person-legacy-compat",
        files: &[],
        scope: "whole crate (V1 model, upcaster, decoder, chain)",
        test_args: &["--lib", "--tests"],
        env: &[("PROPTEST_CASES", "256")],
        first_pass_skips: &[],
    },
    Target {
        package: "person-streaming",
        files: &[
            "crates/person-streaming/src/publisher.rs",
            "crates/person-streaming/src/dlq.rs",
        ],
        scope: "`publisher.rs`, `dlq.rs`",
        // Unit tests and the integration tests against real nats-server processes.
        test_args: &["--lib", "--test", "it"],
        env: &[],
        // The five tests of over 8 s (server kills, 50,000 publishes, the replay race);
        // the first pass also runs six tests at a time (they mostly wait on their
        // servers): about 15 s a test run instead of 40.
        first_pass_skips: &[
            "fifty_thousand_pipelined_publishes",
            "publishing_through_a_server_crash",
            "replays_store_one_copy_when_retried",
            "batches_cut_by_a_server_kill",
            "batches_cut_by_a_dropped_connection",
        ],
    },
];

fn usage() -> String {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.package).collect();
    format!(
        "usage: cargo xtask mutants [--crate NAME]... [--list] [--iterate] [--second-pass] [--report] [--jobs N] [-- CARGO_MUTANTS_ARGS]\n\n\
         Runs cargo-mutants {VERSION} (installed if missing) on each crate, or on those named\n\
         with --crate, and prints the kill rate per crate.\n\n\
         options:\n  \
         --crate NAME  one of: {}\n  \
         --list        only count the mutants of each crate (nothing is built)\n  \
         --iterate     test again only what the last run did not catch (after adding tests)\n  \
         --second-pass for a crate tested in two passes: only the second (what the first\n                missed, against every test)\n  \
         --report      run nothing: summarise the last results again\n  \
         --jobs N      cargo-mutants build directories at once (default 1)\n  \
         -- ARGS       passed to cargo-mutants, e.g. `-- -F 'Core::step'`",
        names.join(", ")
    )
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut chosen: Vec<&Target> = Vec::new();
    let mut list = false;
    let mut iterate = false;
    let mut report = false;
    let mut second_only = false;
    let mut jobs: u32 = 1;
    let mut extra: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--crate" | "-p" => {
                let name = it.next().context("--crate needs a crate name")?;
                let Some(t) = TARGETS.iter().find(|t| t.package == name) else {
                    bail!("no mutation target `{name}`\n\n{}", usage());
                };
                chosen.push(t);
            }
            "--list" => list = true,
            "--iterate" => iterate = true,
            "--report" => report = true,
            "--second-pass" => second_only = true,
            "--jobs" | "-j" => {
                jobs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|j| *j > 0)
                    .context("--jobs needs a whole number above 0")?;
            }
            "--" => extra.extend(it.by_ref().cloned()),
            "-h" | "--help" => {
                eprintln!("{}", usage());
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n\n{}", usage()),
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.iter().collect();
    }
    ensure_installed()?;

    if list {
        for t in &chosen {
            let (generated, equivalent) = counts(t, &extra)?;
            eprintln!(
                "{}: {} mutants ({equivalent} more listed as equivalent)",
                t.package,
                generated.len()
            );
        }
        return Ok(());
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for t in chosen {
        let out = output_dir(t).join("mutants.out");
        let ok = if report {
            true
        } else if t.first_pass_skips.is_empty() {
            run_target(t, jobs, iterate, &extra, &[], &[])?
        } else {
            if !second_only {
                run_target(t, jobs, iterate, &extra, t.first_pass_skips, &[])?;
                // Only a first pass that finished has anything to go on.
                let (current, equivalent) = counts(t, &extra)?;
                Row::read(t, &out, &current, equivalent)?;
            }
            second_pass(t, jobs, &extra)?
        };
        // The mutants of the code as it is now (it may have changed during the run).
        let (current, equivalent) = counts(t, &extra)?;
        let row = Row::read(t, &out, &current, equivalent)
            .with_context(|| format!("no results for {}", t.package))?;
        if !ok && row.missed == 0 && row.timeouts == 0 {
            failed.push(format!(
                "{}: cargo-mutants failed (see its output)",
                t.package
            ));
        }
        if row.missed > 0 {
            failed.push(format!(
                "{}: {} missed, listed in {}",
                t.package,
                row.missed,
                out.join("missed.txt").display()
            ));
        }
        rows.push(row);
    }
    let table = render(&rows);
    eprintln!("\n{table}");
    // A run narrowed by extra cargo-mutants arguments (`-F`, `--shard`...) is not the
    // crate's figure: it is printed, not recorded.
    let recorded = if extra.is_empty() {
        update_reliability(&rows)?;
        "RELIABILITY.md updated"
    } else {
        "narrowed run: RELIABILITY.md left as it was"
    };
    eprintln!(
        "mutants: {} crate(s) in {:.0?}; {recorded}",
        rows.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        bail!(
            "surviving mutants: kill each with a test, or list it as equivalent (with its \
             reason) in .cargo/mutants.toml\n  {}",
            failed.join("\n  ")
        );
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn output_dir(t: &Target) -> PathBuf {
    target_dir().join("mutants").join(t.package)
}

/// `cargo mutants` from the workspace root. `cargo` itself is the one that ran the
/// xtask (the pinned toolchain).
fn cargo_mutants() -> Command {
    let mut cmd = crate::cargo();
    cmd.arg("mutants");
    cmd
}

fn installed_version() -> Option<String> {
    let out = cargo_mutants().arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_installed() -> Result<()> {
    let want = format!("cargo-mutants {VERSION}");
    if installed_version().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    crate::step(
        "install cargo-mutants",
        crate::cargo().args(["install", "--locked", "cargo-mutants", "--version", VERSION]),
    )?;
    match installed_version() {
        Some(v) if v == want => Ok(()),
        other => {
            bail!("installed cargo-mutants {VERSION}, but `cargo mutants --version` says {other:?}")
        }
    }
}

/// The arguments that choose a target's mutants.
fn filter_args(t: &Target, extra: &[String]) -> Vec<String> {
    let mut args = vec!["--package".to_owned(), t.package.to_owned()];
    for f in t.files {
        args.push("--file".into());
        args.push((*f).into());
    }
    args.extend(extra.iter().cloned());
    args
}

/// The names of the mutants cargo-mutants would test (`file:line:col: change`); with
/// `config` false, also those `.cargo/mutants.toml` excludes.
fn list_names(t: &Target, extra: &[String], config: bool) -> Result<Vec<String>> {
    let mut cmd = cargo_mutants();
    cmd.arg("--list").args(filter_args(t, extra));
    if !config {
        cmd.arg("--no-config");
    }
    let out = cmd.output().context("cannot run `cargo mutants --list`")?;
    if !out.status.success() {
        bail!(
            "`cargo mutants --list` failed for {}:\n{}",
            t.package,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The mutants of the code as it is now, and how many more `.cargo/mutants.toml`
/// leaves out as equivalent.
fn counts(t: &Target, extra: &[String]) -> Result<(Vec<String>, usize)> {
    let generated = list_names(t, extra, true)?;
    let all = list_names(t, extra, false)?.len();
    let equivalent = all.saturating_sub(generated.len());
    Ok((generated, equivalent))
}

/// Runs cargo-mutants on one target; false if it reported anything but all caught.
fn run_target(
    t: &Target,
    jobs: u32,
    iterate: bool,
    extra: &[String],
    skips: &[&str],
    only: &[String],
) -> Result<bool> {
    let out = output_dir(t);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // cargo-mutants' `--iterate` lists what earlier runs caught and found unviable
    // together (`previously_caught.txt`); keep the unviable apart to count them.
    let results = out.join("mutants.out");
    let unviable_before: Vec<String> = if iterate {
        let mut names = lines(&results.join("unviable.txt"));
        names.extend(lines(&results.join(PREVIOUSLY_UNVIABLE)));
        names
    } else {
        Vec::new()
    };
    let mut cmd = cargo_mutants();
    cmd.args(filter_args(t, extra))
        .args(["--jobs", &jobs.to_string()])
        .arg("--output")
        .arg(&out);
    if iterate {
        // Skips what earlier runs caught or found unviable, and carries them over.
        cmd.arg("--iterate");
    }
    for name in only {
        cmd.arg("--re").arg(format!("^{}$", regex_escape(name)));
    }
    cmd.arg("--").args(t.test_args).envs(t.env.iter().copied());
    if !skips.is_empty() {
        cmd.args(["--", "--test-threads", "6"]);
        for s in skips {
            cmd.args(["--skip", s]);
        }
    }
    if jobs == 1 {
        // One build directory at a time: it can share one target directory across
        // runs, so dependencies are built once, not once per run.
        cmd.env(
            "CARGO_TARGET_DIR",
            target_dir().join("mutants").join("build"),
        );
    }
    eprintln!("\n==> mutants {}: {cmd:?}", t.package);
    let status = cmd.status().context("cannot run cargo-mutants")?;
    if results.is_dir() {
        let mut text = unviable_before.join("\n");
        text.push('\n');
        std::fs::write(results.join(PREVIOUSLY_UNVIABLE), text.trim_start())
            .context("cannot record the unviable mutants of earlier runs")?;
    }
    // cargo-mutants exits 2 for missed mutants and 3 for timeouts; the summary says
    // which. Anything else (a failing baseline, a bad argument) has no outcomes.
    Ok(status.success())
}

/// Beside cargo-mutants' files: the unviable mutants of runs before an `--iterate`.
const PREVIOUSLY_UNVIABLE: &str = "previously_unviable.txt";
/// Beside cargo-mutants' files: the mutants a first pass timed out on (hung tests:
/// detected), which the second pass does not test again.
const PREVIOUSLY_TIMED_OUT: &str = "previously_timed_out.txt";

/// `name` as a regular expression matching itself.
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The second pass of a target with slow tests: what the first pass missed, against
/// every test. Its timeouts are kept apart first (the second pass would overwrite
/// them, and testing a hung mutant again with every test only takes longer).
fn second_pass(t: &Target, jobs: u32, extra: &[String]) -> Result<bool> {
    let results = output_dir(t).join("mutants.out");
    // What the first pass missed, and any mutant of the code as it is now that no pass
    // has an outcome for (code changed since: a new function, a moved line).
    let mut known: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for file in [
        "caught.txt",
        "previously_caught.txt",
        "unviable.txt",
        PREVIOUSLY_UNVIABLE,
        "timeout.txt",
        PREVIOUSLY_TIMED_OUT,
    ] {
        known.extend(lines(&results.join(file)));
    }
    let (current, _) = counts(t, extra)?;
    let mut missed = lines(&results.join("missed.txt"));
    missed.extend(current.into_iter().filter(|name| !known.contains(name)));
    missed.sort();
    missed.dedup();
    let mut timed_out = lines(&results.join(PREVIOUSLY_TIMED_OUT));
    timed_out.extend(lines(&results.join("timeout.txt")));
    timed_out.sort();
    timed_out.dedup();
    // Written after the run: cargo-mutants moves the results directory aside as it
    // starts.
    let record = |results: &Path| {
        let mut text = timed_out.join("\n");
        text.push('\n');
        std::fs::write(results.join(PREVIOUSLY_TIMED_OUT), text.trim_start())
            .context("cannot record the first pass's timeouts")
    };
    if missed.is_empty() {
        record(&results)?;
        return Ok(true);
    }
    eprintln!(
        "\n==> {}: {} missed without the slow tests (or not tested yet); testing those with every test",
        t.package,
        missed.len()
    );
    let ok = run_target(t, jobs, true, extra, &[], &missed)?;
    record(&results)?;
    Ok(ok)
}

/// The non-empty lines of a file; none if it does not exist.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One crate's line of the table.
struct Row {
    package: String,
    scope: String,
    caught: u64,
    missed: u64,
    unviable: u64,
    timeouts: u64,
    equivalent: usize,
}

impl Row {
    /// The outcomes of the mutants in `current` (the code as it is now): those of the
    /// last run, and what earlier runs of an `--iterate` chain caught or found
    /// unviable. A mutant whose line moved since is known by its new name only, so an
    /// outcome under its old name is not counted twice.
    fn read(t: &Target, out: &Path, current: &[String], equivalent: usize) -> Result<Row> {
        let path = out.join("outcomes.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("bad {}", path.display()))?;
        if json.get("end_time").is_none_or(serde_json::Value::is_null) {
            bail!(
                "the last run of {} did not finish (interrupted?): nothing recorded",
                t.package
            );
        }
        let n = |key: &str| json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        if n("success") == 0 && n("caught") + n("missed") == 0 && n("total_mutants") > 0 {
            bail!("the baseline test run of {} did not pass", t.package);
        }
        let current: std::collections::BTreeSet<&str> =
            current.iter().map(String::as_str).collect();
        let set = |file: &str| -> std::collections::BTreeSet<String> {
            lines(&out.join(file))
                .into_iter()
                .filter(|name| current.contains(name.as_str()))
                .collect()
        };
        let mut unviable = set("unviable.txt");
        unviable.extend(set(PREVIOUSLY_UNVIABLE));
        let mut caught = set("caught.txt");
        caught.extend(
            set("previously_caught.txt")
                .into_iter()
                .filter(|name| !unviable.contains(name)),
        );
        let missed = set("missed.txt");
        let mut timeouts = set("timeout.txt");
        timeouts.extend(
            set(PREVIOUSLY_TIMED_OUT)
                .into_iter()
                .filter(|name| !caught.contains(name) && !missed.contains(name)),
        );
        Ok(Row {
            package: t.package.to_owned(),
            scope: t.scope.to_owned(),
            caught: caught.len() as u64,
            missed: missed.len() as u64,
            unviable: unviable.len() as u64,
            timeouts: timeouts.len() as u64,
            equivalent,
        })
    }

    fn kill_rate(&self) -> String {
        let tested = self.caught + self.missed;
        if tested == 0 {
            return "n/a".into();
        }
        format!("{:.1}%", self.caught as f64 * 100.0 / tested as f64)
    }

    fn line(&self) -> String {
        format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            self.package,
            self.scope,
            self.caught,
            self.missed,
            self.unviable,
            self.timeouts,
            self.equivalent,
            self.kill_rate(),
        )
    }
}

const HEADER: &str = "| crate | mutated | caught | missed | unviable | timeouts | equivalent (excluded) | kill rate |\n\
                      |---|---|---:|---:|---:|---:|---:|---:|";

fn render(rows: &[Row]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for r in rows {
        let _ = writeln!(out, "{}", r.line());
    }
    out
}

/// Replaces the rows of the crates just run in RELIABILITY.md's table, keeping the
/// others, in the order of [`TARGETS`].
fn update_reliability(rows: &[Row]) -> Result<()> {
    let path = root().join("RELIABILITY.md");
    let text = std::fs::read_to_string(&path).context("cannot read RELIABILITY.md")?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("RELIABILITY.md has no `{BEGIN}` ... `{END}` markers");
    };
    let mut lines: BTreeMap<usize, String> = BTreeMap::new();
    for old in text[b + BEGIN.len()..e].lines() {
        if let Some(i) = TARGETS
            .iter()
            .position(|t| old.starts_with(&format!("| `{}` |", t.package)))
        {
            lines.insert(i, old.to_owned());
        }
    }
    for r in rows {
        if let Some(i) = TARGETS.iter().position(|t| t.package == r.package) {
            lines.insert(i, r.line());
        }
    }
    let mut table = String::from(HEADER);
    table.push('\n');
    for l in lines.values() {
        table.push_str(l);
        table.push('\n');
    }
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..b], &text[e..]);
    std::fs::write(&path, updated).context("cannot write RELIABILITY.md")
}
