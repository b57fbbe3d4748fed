//! `cargo xtask reliability`: runs the reliability suite (the `e2e` test binary of
//! `person-e2e`) and regenerates the table in RELIABILITY.md from the rows the cases
//! wrote to `target/reliability/<case>.json`.
//!
//! `cargo xtask soak --minutes N`: runs only the soak case, for N minutes, and prints
//! its row (RELIABILITY.md keeps the CI-length soak).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, root, step};

const BEGIN: &str = "<!-- reliability:begin -->";
const END: &str = "<!-- reliability:end -->";
const SOAK_TEST: &str = "soak::steady_load_keeps_memory_flat_and_leaks_no_tasks";
const SOAK_SECS_ENV: &str = "RELIABILITY_SOAK_SECS";

/// The cases in the order the table lists them; rows of other cases follow, by name.
const ORDER: &[&str] = &[
    "fault-1-publisher-server-kill",
    "fault-2-consumer-server-kill",
    "fault-3-consumer-crash",
    "fault-4-cluster",
    "fault-5-slow-and-hung-handlers",
    "hostile-bad-messages",
    "hostile-bad-identifiers",
    "fuzz-decoders",
    "fuzz-memory",
    "auth",
    "config-files",
    "soak",
];

fn report_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("reliability")
}

pub(crate) fn run(_args: &[String]) -> Result<()> {
    let started = Instant::now();
    let dir = report_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    step(
        "reliability suite",
        cargo().args(["test", "-p", "person-e2e", "--test", "e2e"]),
    )?;
    let rows = read_rows()?;
    let missing: Vec<&&str> = ORDER
        .iter()
        .filter(|c| !rows.iter().any(|r| str_field(r, "case") == **c))
        .collect();
    if !missing.is_empty() {
        bail!("the suite passed but wrote no row for {missing:?}");
    }
    let path = root().join("RELIABILITY.md");
    let text = std::fs::read_to_string(&path).context("cannot read RELIABILITY.md")?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("RELIABILITY.md has no `{BEGIN}` ... `{END}` markers");
    };
    let updated = format!("{}{BEGIN}\n{}{}", &text[..b], table(&rows), &text[e..]);
    std::fs::write(&path, updated).context("cannot write RELIABILITY.md")?;
    eprintln!(
        "\nreliability: {} cases passed in {:.0?}; RELIABILITY.md updated",
        rows.len(),
        started.elapsed()
    );
    Ok(())
}

pub(crate) fn soak(args: &[String]) -> Result<()> {
    let mut minutes: u64 = 1;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = it
                    .next()
                    .context("--minutes needs a number")?
                    .parse()
                    .context("--minutes needs a whole number")?;
            }
            other => bail!("unknown argument `{other}` (usage: cargo xtask soak --minutes N)"),
        }
    }
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    step(
        "soak",
        cargo()
            .args([
                "test",
                "-p",
                "person-e2e",
                "--test",
                "e2e",
                "--",
                "--exact",
                SOAK_TEST,
            ])
            .env(SOAK_SECS_ENV, (minutes * 60).to_string()),
    )?;
    let row =
        std::fs::read_to_string(report_dir().join("soak.json")).context("the soak wrote no row")?;
    eprintln!("\nsoak: {}", row.trim());
    Ok(())
}

fn read_rows() -> Result<Vec<serde_json::Value>> {
    let dir = report_dir();
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("no rows in {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                rows.push(
                    serde_json::from_str(line)
                        .with_context(|| format!("bad row in {}", path.display()))?,
                );
            }
        }
    }
    rows.sort_by_key(|r| {
        let case = str_field(r, "case").to_owned();
        (
            ORDER.iter().position(|c| *c == case).unwrap_or(ORDER.len()),
            case,
        )
    });
    Ok(rows)
}

fn str_field<'a>(row: &'a serde_json::Value, name: &str) -> &'a str {
    row.get(name).and_then(|v| v.as_str()).unwrap_or("")
}

fn num_field(row: &serde_json::Value, name: &str) -> String {
    row.get(name).map(|v| v.to_string()).unwrap_or_default()
}

/// Markdown-safe cell text.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn table(rows: &[serde_json::Value]) -> String {
    let mut out = String::new();
    out.push_str(
        "| case | what was done | load held | faults injected | inputs tried | events lost | duplicated in the projection | redeliveries absorbed | seconds | result |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | pass |",
            str_field(r, "case"),
            cell(str_field(r, "what")),
            cell(str_field(r, "load")),
            cell(str_field(r, "faults")),
            num_field(r, "inputs"),
            num_field(r, "lost"),
            num_field(r, "duplicated"),
            num_field(r, "absorbed"),
            num_field(r, "seconds"),
        );
    }
    out.push_str("\nMeasured details, per case:\n\n");
    for r in rows {
        let _ = writeln!(
            out,
            "- `{}`: {}",
            str_field(r, "case"),
            cell(str_field(r, "notes"))
        );
    }
    out.push('\n');
    out
}
