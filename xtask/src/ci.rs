//! `cargo xtask ci`: the one command CI runs. If it passes locally, CI is green too.

use std::time::Instant;

use anyhow::Result;

use crate::{cargo, layering, sim, step};

pub(crate) fn run(_args: &[String]) -> Result<()> {
    let started = Instant::now();
    step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    layering::check()?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // One test build covers unit tests, integration tests, examples (built) and
    // benches (each benchmark runs once in test mode, so they are known to work).
    // The simulation runs as its own step below, so its figures are printed.
    step(
        "tests",
        cargo().args([
            "test",
            "--workspace",
            "--all-targets",
            "--no-fail-fast",
            "--",
            "--skip",
            "schedules_keep_the_contract",
        ]),
    )?;
    sim::run_schedules(100_000, 0)?;
    step("doc-tests", cargo().args(["test", "--workspace", "--doc"]))?;
    step(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("\nci: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}
