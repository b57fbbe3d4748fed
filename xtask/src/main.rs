//! Project automation. Run from anywhere in the workspace:
//!
//! - `cargo xtask ci`: everything CI checks (format, lints, tests, docs, benches build, layering).
//! - `cargo xtask layering`: only the dependency-layering check.
//! - `cargo xtask bench [--quick]`: the product against raw async-nats, end to end.
//! - `cargo xtask nats`: install (if needed) the pinned nats-server and print its path.
//! - `cargo xtask reliability`: run the reliability suite and regenerate RELIABILITY.md.
//! - `cargo xtask soak --minutes N`: the soak case alone, for N minutes.
//! - `cargo xtask sim --seeds N`: the delivery core's simulation over N schedules.
//! - `cargo xtask mutants [--crate NAME]`: mutation testing of the contract's crates.

mod bench;
mod ci;
mod layering;
mod mutants;
mod nats;
mod reliability;
mod sim;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "ci" => ci::run(&rest),
        "layering" => layering::check(),
        "nats" => nats::run(&rest),
        "bench" => bench::run(&rest),
        "reliability" => reliability::run(&rest),
        "soak" => reliability::soak(&rest),
        "sim" => sim::run(&rest),
        "mutants" => mutants::run(&rest),
        "" | "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => {
            print_help();
            bail!("unknown task `{other}`")
        }
    }
}

fn print_help() {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         tasks:\n  \
         ci         format, clippy, tests, docs, benches build, examples, layering\n  \
         layering   check that the pure crates stay pure\n  \
         nats       install the pinned nats-server if needed and print its path\n  \
         bench      product vs raw async-nats benchmarks (--quick for a short run)\n  \
         reliability  run the reliability suite and regenerate RELIABILITY.md\n  \
         soak       the soak case alone: --minutes N (default 1)\n  \
         sim        the delivery simulation: --seeds N (default 1,000,000), --first S\n  \
         mutants    mutation testing (cargo-mutants) of the contract's crates: --crate NAME, --list"
    );
}

/// The workspace root (the parent of the xtask crate).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, echoing it first, and fails if it fails.
pub(crate) fn step(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {step}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{step}`"))?;
    if !status.success() {
        bail!("`{step}` failed with {status}");
    }
    Ok(())
}
