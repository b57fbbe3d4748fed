//! `cargo xtask nats`: finds (installing if needed) the pinned `nats-server` the tests use, and
//! prints its path and version, for running the server by hand.
//!
//! - `cargo xtask nats`: `path`, `version` and `source` lines, plus a hint on how to run it.
//! - `cargo xtask nats --path`: only the path, for scripts:
//!   `"$(cargo xtask nats --path)" -js -sd /tmp/js`.

use anyhow::{Context, Result, bail};

/// Runs the `nats` task with the arguments after the task name.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut path_only = false;
    for arg in args {
        match arg.as_str() {
            "--path" => path_only = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask nats [--path]\n\n\
                     Finds the nats-server the tests use (NATS_SERVER_BIN, else the per-user cache, \
                     else installs the pinned 2.15.1 into the cache) and prints its path and version.\n\n\
                     options:\n  \
                     --path   print only the path"
                );
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (usage: cargo xtask nats [--path])"),
        }
    }

    let server =
        nats_harness::provision::nats_server().context("could not find or install nats-server")?;
    if path_only {
        println!("{}", server.path.display());
        return Ok(());
    }
    println!("path: {}", server.path.display());
    println!("version: {}", server.version);
    println!("source: {}", server.source);
    eprintln!(
        "\nrun a JetStream server by hand with, for example:\n  {} -js -sd /tmp/nats-js -a 127.0.0.1 -p 4222 -m 8222",
        server.path.display()
    );
    Ok(())
}
