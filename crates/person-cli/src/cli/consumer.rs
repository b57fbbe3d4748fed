//! `consumer`: pause, resume and rewind a consumer of the event stream.

use std::io::{BufRead, IsTerminal, Write};

use chrono::{DateTime, Utc};
use person_cli::error::CliError;
use person_cli::filter::parse_time;
use person_cli::format::time;
use person_streaming::{
    PauseState, Rewind, RewindPlan, StreamingError, StreamingErrorKind, indefinite_pause,
};

use super::{Global, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream consumer pause person-projection-summary
  person-stream consumer pause person-projection-summary --until 2025-07-15T12:00:00Z
  person-stream consumer resume person-projection-summary
  person-stream consumer rewind person-projection-summary --to-seq 1 --dry-run
  person-stream consumer rewind person-projection-summary --to-time 2025-07-15T08:00:00Z --yes

A consumer is named by its durable name (the CONSUMER column of `person-stream status`);
only the consumer named is touched. Pausing needs nats-server 2.11 or later, rewinding
2.14 or later.";

const PAUSE_EXAMPLES: &str = "\
Examples:
  person-stream consumer pause person-projection-summary
  person-stream consumer pause person-projection-summary --until 2h
  person-stream consumer pause person-projection-summary --until 2025-07-15T12:00:00Z

The server delivers nothing to the consumer while it is paused: not new events, not
redeliveries. Running subscribers keep pulling and simply get nothing; what they hold
they can still acknowledge. Without --until the pause lasts until `consumer resume`
(the server is given 2999-12-31T23:59:59Z); with --until the server resumes it by
itself at that time. `person-stream status` shows paused consumers and until when.";

const RESUME_EXAMPLES: &str = "\
Examples:
  person-stream consumer resume person-projection-summary

Deliveries start again at once, from where the consumer was. Resuming a consumer that
is not paused changes nothing.";

const REWIND_EXAMPLES: &str = "\
Examples:
  person-stream consumer rewind person-projection-summary --to-seq 1 --dry-run
  person-stream consumer rewind person-projection-summary --to-seq 1200 --yes
  person-stream consumer rewind person-projection-summary --to-time 2025-07-15T08:00:00Z
  person-stream consumer rewind person-projection-summary --to-time 6h --json --yes

After a rewind to sequence N the consumer's ack floor is N-1 and nothing is outstanding:
the next event it delivers is N (or, if N is gone or not one of its subjects, the first
of its events after N), and every event from there on is delivered again, in order.
--to-time T rewinds to the first event stored at or after T. The plan (where the
consumer is, where it goes, how many events it delivers again) is printed first; on a
terminal you are asked to confirm unless --yes is given, and without a terminal --yes
is required. --dry-run prints the plan and changes nothing. Pause the consumer first
for a clean cut while subscribers run: they get the events again from N either way.";

/// `consumer` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Stop deliveries to a consumer until a time, or until resumed.
    #[command(after_help = PAUSE_EXAMPLES)]
    Pause(PauseArgs),
    /// Start deliveries to a paused consumer again.
    #[command(after_help = RESUME_EXAMPLES)]
    Resume(ResumeArgs),
    /// Move a consumer back to a sequence or a time, to deliver events again from there.
    #[command(after_help = REWIND_EXAMPLES)]
    Rewind(RewindArgs),
}

/// `consumer pause` options.
#[derive(Debug, clap::Args)]
pub(crate) struct PauseArgs {
    /// The consumer's durable name.
    name: String,
    /// Resume by itself at this time (RFC 3339, or a duration from now: 90s, 15m, 2h,
    /// 7d). Default: until `consumer resume`.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// `consumer resume` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    /// The consumer's durable name.
    name: String,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// `consumer rewind` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_seq", "to_time"])))]
pub(crate) struct RewindArgs {
    /// The consumer's durable name.
    name: String,
    /// The stream sequence to deliver next.
    #[arg(long, value_name = "N")]
    to_seq: Option<u64>,
    /// Deliver again from the first event stored at or after this time (RFC 3339, or an
    /// age: 90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    to_time: Option<String>,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    /// The plan, then the result, as JSON documents (one a line).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(g: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Pause(args) => pause(g, args).await,
        Command::Resume(args) => resume(g, args).await,
        Command::Rewind(args) => rewind(g, args).await,
    }
}

/// A time ahead: RFC 3339, or a duration from `now`.
fn time_ahead(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let before = parse_time(text, now)?;
    now.checked_add_signed(now - before)
        .ok_or_else(|| format!("`{text}` is too far ahead"))
}

/// A streaming error of a consumer command, with a hint that fits.
fn error(g: &Global, e: &StreamingError, name: &str) -> CliError {
    match e.kind() {
        StreamingErrorKind::NotFound => CliError::other(e.to_string()).with_hint(format!(
            "`person-stream status` lists the consumers; `person-stream setup` creates the configured ones (is `{name}` spelled right?)"
        )),
        StreamingErrorKind::InvalidInput => CliError::usage(e.to_string()),
        StreamingErrorKind::Rejected => CliError::other(e.to_string()).with_hint(
            "pausing needs nats-server 2.11 or later and rewinding 2.14 or later; the message above says what the server refused",
        ),
        _ => g.streaming_error(e),
    }
}

fn pause_json(s: &PauseState) -> serde_json::Value {
    serde_json::json!({
        "consumer": s.consumer,
        "paused": s.paused,
        "paused_until": s.until.map(time),
        "indefinitely": s.until.is_some_and(|t| t >= indefinite_pause()),
    })
}

fn until_text(until: DateTime<Utc>) -> String {
    if until >= indefinite_pause() {
        "until resumed (`person-stream consumer resume`)".to_owned()
    } else {
        format!("until {} (resumes by itself then)", time(until))
    }
}

async fn pause(g: &Global, args: PauseArgs) -> Result<(), CliError> {
    let until = match &args.until {
        Some(t) => {
            time_ahead(t, Utc::now()).map_err(|e| CliError::usage(format!("--until: {e}")))?
        }
        None => indefinite_pause(),
    };
    if until <= Utc::now() {
        return Err(
            CliError::usage(format!("--until: {} is not in the future", time(until)))
                .with_hint("give a later time, or `person-stream consumer resume` to resume now"),
        );
    }
    let client = g.connect().await?;
    let state = client
        .pause_consumer(&args.name, until)
        .await
        .map_err(|e| error(g, &e, &args.name))?;
    if args.json {
        print_json(&pause_json(&state));
    } else {
        match state.until {
            Some(t) if state.paused => {
                println!("paused consumer {} {}", state.consumer, until_text(t))
            }
            _ => println!(
                "consumer {} is not paused (the server did not keep the pause)",
                state.consumer
            ),
        }
    }
    Ok(())
}

async fn resume(g: &Global, args: ResumeArgs) -> Result<(), CliError> {
    let client = g.connect().await?;
    let state = client
        .resume_consumer(&args.name)
        .await
        .map_err(|e| error(g, &e, &args.name))?;
    if args.json {
        print_json(&pause_json(&state));
    } else {
        println!("resumed consumer {}", state.consumer);
    }
    Ok(())
}

fn plan_json(p: &RewindPlan, dry_run: bool) -> serde_json::Value {
    serde_json::json!({
        "plan": {
            "consumer": p.consumer,
            "stream": p.stream,
            "target_sequence": p.target_sequence,
            "last_sequence": p.last_sequence,
            "ack_floor": p.ack_floor,
            "new_ack_floor": p.new_ack_floor,
            "delivered_sequence": p.delivered_sequence,
            "ack_pending": p.ack_pending,
            "delivered_again": p.delivered_again,
            "skipped": p.skipped,
            "pending_after": p.pending_after,
            "paused": p.paused,
        },
        "dry_run": dry_run,
    })
}

fn print_plan(p: &RewindPlan, asked: &str) {
    println!(
        "rewind consumer {} of stream {} to sequence {}{asked}",
        p.consumer, p.stream, p.target_sequence
    );
    println!(
        "  now:    ack floor {}, last delivered {}, {} unacknowledged",
        p.ack_floor, p.delivered_sequence, p.ack_pending
    );
    println!(
        "  after:  ack floor {}; the next event delivered is {} (or its first event after it)",
        p.new_ack_floor, p.target_sequence
    );
    println!(
        "  events delivered again: {}; events to deliver in all: {} (stream ends at {})",
        p.delivered_again, p.pending_after, p.last_sequence
    );
    if p.skipped > 0 {
        println!(
            "  events skipped (after the ack floor, before {}): {}; they are not delivered again",
            p.target_sequence, p.skipped
        );
    }
    if p.paused {
        println!(
            "  the consumer is paused and stays paused: nothing is delivered until it is resumed"
        );
    }
}

async fn rewind(g: &Global, args: RewindArgs) -> Result<(), CliError> {
    let (rewind, asked) = match (args.to_seq, &args.to_time) {
        (Some(n), _) => (Rewind::ToSequence(n), String::new()),
        (None, Some(t)) => {
            let t = parse_time(t, Utc::now())
                .map_err(|e| CliError::usage(format!("--to-time: {e}")))?;
            (
                Rewind::ToTime(t),
                format!(" (the first event stored at or after {})", time(t)),
            )
        }
        (None, None) => return Err(CliError::usage("give --to-seq N or --to-time T")),
    };
    let client = g.connect().await?;
    let plan = client
        .plan_rewind(&args.name, rewind)
        .await
        .map_err(|e| error(g, &e, &args.name))?;
    if args.json {
        print_json(&plan_json(&plan, args.dry_run));
    } else {
        print_plan(&plan, &asked);
    }
    if args.dry_run {
        if !args.json {
            println!("dry run: nothing was changed");
        }
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "refusing to rewind consumer {} without confirmation",
                plan.consumer
            ))
            .with_hint(
                "pass --yes, or run it in a terminal to be asked; --dry-run shows the plan only",
            ));
        }
        eprint!(
            "rewind consumer {} to sequence {}, delivering {} event(s) again? [y/N] ",
            plan.consumer, plan.target_sequence, plan.delivered_again
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            println!("nothing changed");
            return Ok(());
        }
    }
    // The plan shown is the plan carried out: the same request, made again.
    let receipt = client
        .rewind_consumer(&args.name, rewind)
        .await
        .map_err(|e| error(g, &e, &args.name))?;
    if args.json {
        print_json(&serde_json::json!({
            "rewound": receipt.plan.consumer,
            "target_sequence": receipt.plan.target_sequence,
            "ack_floor": receipt.ack_floor,
            "pending": receipt.pending,
        }));
    } else {
        println!(
            "rewound consumer {}: ack floor {}, {} event(s) to deliver; the next is {} or its first event after it",
            receipt.plan.consumer, receipt.ack_floor, receipt.pending, receipt.plan.target_sequence
        );
    }
    Ok(())
}
