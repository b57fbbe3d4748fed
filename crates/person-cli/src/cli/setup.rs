//! `setup`: ensure the streams and consumers of the configuration.

use person_cli::error::CliError;
use person_streaming::EnsureReport;

use super::{Global, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream setup --config person-streaming.toml --dry-run   # show what would change
  person-stream setup --config person-streaming.toml             # apply it
  person-stream setup                                            # the built-in defaults

Idempotent: running it again changes nothing. Settings that cannot change in place
(storage, retention) are reported as errors, never silently kept.";

/// `setup` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Show what would be created or updated, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(g: &Global, args: Args) -> Result<(), CliError> {
    let client = g.connect().await?;
    let report = if args.dry_run {
        client.plan().await
    } else {
        client.ensure().await
    }
    .map_err(|e| g.streaming_error(&e))?;
    if args.json {
        print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "unchanged": report.is_unchanged(),
            "created_streams": report.created_streams,
            "updated_streams": report.updated_streams,
            "unchanged_streams": report.unchanged_streams,
            "created_consumers": report.created_consumers,
            "updated_consumers": report.updated_consumers,
            "unchanged_consumers": report.unchanged_consumers,
            "changes": report.changes,
        }));
    } else {
        print!("{}", describe(&report, args.dry_run));
    }
    Ok(())
}

fn describe(r: &EnsureReport, dry_run: bool) -> String {
    let (create, update) = if dry_run {
        ("would create", "would update")
    } else {
        ("created", "updated")
    };
    let mut out = String::new();
    let mut list = |verb: &str, what: &str, names: &[String]| {
        if !names.is_empty() {
            out.push_str(&format!("{verb} {what}: {}\n", names.join(", ")));
        }
    };
    list(create, "streams", &r.created_streams);
    list(update, "streams", &r.updated_streams);
    list("unchanged", "streams", &r.unchanged_streams);
    list(create, "consumers", &r.created_consumers);
    list(update, "consumers", &r.updated_consumers);
    list("unchanged", "consumers", &r.unchanged_consumers);
    for change in &r.changes {
        out.push_str(&format!("  {change}\n"));
    }
    out.push_str(match (r.is_unchanged(), dry_run) {
        (true, _) => "everything is up to date\n",
        (false, true) => "dry run: nothing was changed; run without --dry-run to apply\n",
        (false, false) => "done\n",
    });
    out
}
