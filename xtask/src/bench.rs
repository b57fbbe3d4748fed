//! `cargo xtask bench [--quick]`: runs the end-to-end pairs (release build), then the
//! criterion micro-benchmarks unless `--quick`.

use anyhow::Result;

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut pairs = cargo();
    pairs.args(["run", "--release", "--quiet", "-p", "person-bench", "--"]);
    if quick {
        pairs.arg("--quick");
    }
    step("end-to-end pairs", &mut pairs)?;
    if !quick {
        step(
            "micro-benchmarks",
            cargo().args(["bench", "--workspace", "--exclude", "xtask"]),
        )?;
    }
    Ok(())
}
