//! `cargo xtask ci`: the one command CI runs. If it passes locally, CI is green too.

use std::time::Instant;

use anyhow::Result;

use crate::{cargo, layering, run};

pub(crate) fn run_ci(_args: &[String]) -> Result<()> {
    let started = Instant::now();
    run("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    layering::check()?;
    run(
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
    run(
        "tests",
        cargo().args(["test", "--workspace", "--all-targets", "--no-fail-fast"]),
    )?;
    run("doc-tests", cargo().args(["test", "--workspace", "--doc"]))?;
    run(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("\nci: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}

pub(crate) use run_ci as run;
