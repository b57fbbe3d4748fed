//! The layering check: some crates are defined by what they must not depend on.

use anyhow::{Context, Result, bail};

use crate::cargo;

/// Crates that mean a runtime, networking or I/O.
const IMPURE: &[&str] = &[
    "tokio",
    "async-nats",
    "futures",
    "futures-util",
    "futures-core",
    "futures-io",
    "mio",
    "socket2",
    "async-std",
    "smol",
    "hyper",
    "reqwest",
    "nats-harness",
];

/// The NATS crates: no test harness, and OpenTelemetry only with the (non-default)
/// feature `opentelemetry`.
const NO_HARNESS_NO_OTEL: &[&str] = &[
    "nats-harness",
    "opentelemetry",
    "opentelemetry_sdk",
    "tracing-opentelemetry",
];

/// (crate, forbidden dependencies) pairs checked on normal, transitive dependencies.
fn rules() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("person-metadata", IMPURE),
        ("person-events", IMPURE),
        ("person-legacy-compat", IMPURE),
        ("person-delivery", IMPURE),
        ("person-retry", &["async-nats", "nats-harness"]),
        ("person-streaming", NO_HARNESS_NO_OTEL),
        ("person-subscriptions", NO_HARNESS_NO_OTEL),
        ("person-cli", &["nats-harness"]),
    ]
}

pub(crate) fn check() -> Result<()> {
    eprintln!("\n==> layering");
    let mut violations = Vec::new();
    for (krate, forbidden) in rules() {
        let out = cargo()
            .args([
                "tree", "-q", "-e", "normal", "--prefix", "none", "-p", krate,
            ])
            .output()
            .with_context(|| format!("could not run cargo tree for {krate}"))?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if forbidden.contains(&name) {
                violations.push(format!("{krate} depends on {name} ({line})"));
            }
        }
    }
    violations.sort();
    violations.dedup();
    if violations.is_empty() {
        eprintln!("layering: ok (pure crates free of runtime and I/O crates)");
        Ok(())
    } else {
        bail!("layering violated:\n  {}", violations.join("\n  "))
    }
}
