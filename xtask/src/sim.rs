//! `cargo xtask sim [--seeds N] [--first S]`: the delivery core's deterministic
//! simulation over more schedules than CI runs (CI runs 100,000).

use anyhow::{Result, bail};

use crate::{cargo, step};

/// Runs the simulation test with `SIM_SEEDS` schedules, printing its figures. Built
/// with the whole workspace's features, like the test step, so nothing rebuilds.
pub(crate) fn run_schedules(seeds: u64, first: u64) -> Result<()> {
    step(
        "simulation",
        cargo()
            .args([
                "test",
                "--workspace",
                "--test",
                "sim",
                "--",
                "--nocapture",
                "schedules_keep_the_contract",
            ])
            .env("SIM_SEEDS", seeds.to_string())
            .env("SIM_FIRST", first.to_string()),
    )
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut seeds = 1_000_000;
    let mut first = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = |it: &mut std::slice::Iter<'_, String>| -> Result<u64> {
            match it.next().map(|v| v.replace('_', "").parse()) {
                Some(Ok(v)) => Ok(v),
                _ => bail!("{a} needs a number, e.g. `cargo xtask sim --seeds 1000000`"),
            }
        };
        match a.as_str() {
            "--seeds" => seeds = value(&mut it)?,
            "--first" => first = value(&mut it)?,
            other => bail!("unknown option `{other}` (known: --seeds N, --first S)"),
        }
    }
    run_schedules(seeds, first)
}
