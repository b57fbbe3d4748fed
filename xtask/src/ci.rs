//! `cargo xtask ci`: the one command CI runs. If it passes locally, CI is green too.

use std::time::Instant;

use anyhow::Result;

use crate::{cargo, layering, step};

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
    step(
        "tests",
        cargo().args(["test", "--workspace", "--all-targets", "--no-fail-fast"]),
    )?;
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
