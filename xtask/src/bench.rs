//! `cargo xtask bench [--quick] [--only NAME,..]`: runs the end-to-end pairs (release
//! build), then the criterion micro-benchmarks unless `--quick` or `--only`.

use anyhow::Result;

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().any(|a| a == "--only");
    let mut pairs = cargo();
    pairs.args(["run", "--release", "--quiet", "-p", "person-bench", "--"]);
    pairs.args(args);
    step("end-to-end pairs", &mut pairs)?;
    if !quick && !only {
        step(
            "micro-benchmarks",
            cargo().args(["bench", "--workspace", "--exclude", "xtask"]),
        )?;
    }
    Ok(())
}
