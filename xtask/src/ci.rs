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
    // One test build covers unit tests, integration tests and examples (built); the
    // benches then run once in test mode (they take no test-harness arguments, so they
    // are their own step), and the simulation runs on its own so its figures print.
    step(
        "tests",
        cargo().args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
            "--no-fail-fast",
            "--",
            "--skip",
            "schedules_keep_the_contract",
        ]),
    )?;
    step(
        "benches (test mode)",
        cargo().args(["test", "--workspace", "--benches", "--no-fail-fast"]),
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
