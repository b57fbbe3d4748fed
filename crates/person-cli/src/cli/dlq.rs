//! `dlq`: list, show, replay and purge dead letters.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use chrono::Utc;
use person_cli::error::{CliError, CliErrorKind};
use person_cli::filter::parse_time;
use person_cli::format::{table, time, truncate};
use person_cli::progress::Progress;
use person_legacy_compat::{Origin, RawMessage, decode_message};
use person_streaming::{
    DeadLetterFilter, DeadLetterQueue, StoredDeadLetter, StreamingConfig, StreamingErrorKind,
};

use super::{Global, Interrupt, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream dlq list --consumer person-projection-summary
  person-stream dlq list --limit 20 --after 1234
  person-stream dlq show 42
  person-stream dlq replay --consumer person-projection-summary --dry-run
  person-stream dlq replay --consumer person-projection-summary
  person-stream dlq purge --reason 'unknown event type' --yes

Dead letters are identified by their sequence in the DLQ stream (the ID column of
`dlq list`). Run `person-stream dlq <command> --help` for each command's filters.";

const LIST_EXAMPLES: &str = "\
Examples:
  person-stream dlq list
  person-stream dlq list --consumer person-projection-summary --since 2h
  person-stream dlq list --person 0f8fad5b-d9cb-469f-a165-70867728950e --json
  person-stream dlq list --reason timeout --until 2025-07-15T12:00:00Z
  person-stream dlq list --limit 20
  person-stream dlq list --limit 20 --after 1234

ID is the dead letter's sequence in the DLQ stream: give it to `dlq show`, `dlq replay`
and `dlq purge`. Dead letters are listed oldest first, a page of --limit (100) at a time:
when more match, the last line gives the --after that shows the next page (with --json,
a last document {\"next_after\": ID}). Memory stays bounded by the page whatever the
DLQ's size.";

const SHOW_EXAMPLES: &str = "\
Examples:
  person-stream dlq show 42
  person-stream dlq show 42 --json | jq .event

Shows the original event (decoded, legacy events upcast), its headers, the failure
(reason, class, deliveries, first and last failure) and the same consumer's later events
of that person parked behind it.";

const REPLAY_EXAMPLES: &str = "\
Examples:
  person-stream dlq replay --consumer person-projection-summary --dry-run
  person-stream dlq replay --consumer person-projection-summary
  person-stream dlq replay 42 43 44
  person-stream dlq replay --person 0f8fad5b-d9cb-469f-a165-70867728950e --rate 20
  person-stream dlq replay --all

Each event is replayed to the consumer that dead-lettered it alone, on its replay subject
(person.replay.<consumer>.<person>.<type>): it never becomes part of the person's
history, and the other consumers do not see it again. Replays go in the original stream
order (so each person's events stay in order), and a dead letter is deleted only after
the server acknowledged its replay. A replay is idempotent: run again after a timeout or
a failed delete, it stores nothing new and says \"already replayed\". If a replay fails,
the later dead letters of that person and consumer are left in place. Ctrl-C stops after
the current entry: nothing is half-replayed, and the rest stays in the DLQ. The DLQ is read
500 dead letters at a time (each batch replayed in original stream order), up to the last
one stored when the replay started, so memory stays bounded whatever its size.";

const PURGE_EXAMPLES: &str = "\
Examples:
  person-stream dlq purge --consumer policy-engine --until 7d
  person-stream dlq purge 42 43 --yes
  person-stream dlq purge --all --yes

Asks for confirmation unless --yes is given; without a terminal to ask on, --yes is
required. Dead letters are deleted as they are read, in batches (with their body objects),
so memory stays bounded whatever the DLQ's size; Ctrl-C stops after the current batch.";

/// `dlq` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List dead letters, filtered, as a table or JSON lines.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Show one dead letter: event, headers, failure, parked followers.
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
    /// Put dead-lettered events back on their subjects, in order.
    #[command(after_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Delete dead letters.
    #[command(after_help = PURGE_EXAMPLES)]
    Purge(PurgeArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only this consumer's (durable name).
    #[arg(long)]
    consumer: Option<String>,
    /// Only this person's (`unknown` for undecodable messages).
    #[arg(long, value_name = "ID")]
    person: Option<String>,
    /// Only those whose reason contains this text.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Only those that last failed at or after this time (RFC 3339, or an age: 90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only those that last failed before this time (RFC 3339, or an age: 90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.consumer.is_none()
            && self.person.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// When `--consumer` names a consumer group, what it selects: each partition records
    /// its dead letters under its own durable, and the group's name stands for all.
    fn group_note(&self, config: &StreamingConfig) -> Option<String> {
        let name = self.consumer.as_deref()?;
        let c = config.consumer(name).filter(|c| c.partitions > 1)?;
        Some(format!(
            "note: {name} is a consumer group of {p} partitions: --consumer {name} selects the \
             dead letters of all of them, recorded under {name}-p0 to {name}-p{last} (and under \
             {name}, before partitions); name one of those for a single partition",
            p = c.partitions,
            last = c.partitions - 1
        ))
    }

    fn filter(&self) -> Result<DeadLetterFilter, CliError> {
        let now = Utc::now();
        let time = |flag: &str, t: &Option<String>| {
            t.as_deref()
                .map(|t| parse_time(t, now).map_err(|e| CliError::usage(format!("{flag}: {e}"))))
                .transpose()
        };
        Ok(DeadLetterFilter {
            consumer: self.consumer.clone(),
            person_id: self.person.clone(),
            reason_contains: self.reason.clone(),
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
        })
    }
}

/// `dlq list` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// One JSON document per dead letter (the stored record plus `id`), then
    /// `{"next_after": ID}` when more match.
    #[arg(long)]
    json: bool,
    /// Show at most this many dead letters (a page).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// Start after this ID (the `--after` printed under the previous page).
    #[arg(long, value_name = "ID")]
    after: Option<u64>,
}

/// `dlq show` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The dead letter's ID (its DLQ sequence, from `dlq list`).
    id: u64,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// `dlq replay` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Dead letter IDs to replay (instead of a filter).
    #[arg(value_name = "ID")]
    ids: Vec<u64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Replay every dead letter.
    #[arg(long)]
    all: bool,
    /// Show what would be replayed, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many replays per second (spares the consumers).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// One JSON document per replayed event, then a summary document.
    #[arg(long)]
    json: bool,
}

/// `dlq purge` options.
#[derive(Debug, clap::Args)]
pub(crate) struct PurgeArgs {
    /// Dead letter IDs to delete (instead of a filter).
    #[arg(value_name = "ID")]
    ids: Vec<u64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Delete every dead letter.
    #[arg(long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

pub(crate) async fn run(g: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::List(args) => list(g, args).await,
        Command::Show(args) => show(g, args).await,
        Command::Replay(args) => replay(g, args).await,
        Command::Purge(args) => purge(g, args).await,
    }
}

async fn list(g: &Global, args: ListArgs) -> Result<(), CliError> {
    let filter = args.filter.filter()?;
    if args.limit == 0 {
        return Err(CliError::usage("--limit must be at least 1"));
    }
    let client = g.connect().await?;
    if let Some(note) = args.filter.group_note(client.config()) {
        eprintln!("{note}");
    }
    let dlq = client.dead_letters();
    let page = dlq
        .page(&filter, args.after, args.limit)
        .await
        .map_err(|e| g.streaming_error(&e))?;
    if args.json {
        for s in &page.letters {
            print_json(&letter_json(s));
        }
        if let Some(next) = page.next_after {
            print_json(&serde_json::json!({ "next_after": next }));
        }
        return Ok(());
    }
    let whole = args.after.is_none() && page.next_after.is_none();
    if page.letters.is_empty() {
        if whole {
            println!("no dead letters match");
        } else {
            println!("no more dead letters match");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .letters
        .iter()
        .map(|s| {
            let l = &s.letter;
            vec![
                s.dlq_sequence.to_string(),
                time(l.last_failure_at),
                l.consumer.clone(),
                l.person_id.clone().unwrap_or_else(|| "-".into()),
                l.event_type.clone().unwrap_or_else(|| "-".into()),
                l.delivery_count.to_string(),
                truncate(&l.reason, 60),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "LAST FAILURE",
                "CONSUMER",
                "PERSON",
                "TYPE",
                "DELIVERIES",
                "REASON"
            ],
            &rows
        )
    );
    if whole {
        println!("{} dead letter(s)", page.letters.len());
    } else {
        // Counted on the server for a consumer or person filter, else read one record
        // at a time: never loaded together.
        let total = dlq
            .count(&filter)
            .await
            .map_err(|e| g.streaming_error(&e))?;
        println!(
            "{} of {total} matching dead letter(s) shown",
            page.letters.len()
        );
    }
    if let Some(next) = page.next_after {
        println!("more match: add --after {next} for the next page");
    }
    Ok(())
}

/// An error class as the JSON names it (`transient`, `permanent`, `{"retry_after_ms":n}`).
fn class_name(class: person_retry::ErrorClass) -> String {
    serde_json::to_value(class)
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn letter_json(s: &StoredDeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(&s.letter).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), s.dlq_sequence.into());
        if let Some(body) = &s.body {
            obj.insert(
                "body_object".into(),
                serde_json::json!({
                    "name": body.name,
                    "digest": body.digest,
                    "loaded": body.loaded,
                }),
            );
        }
    }
    v
}

async fn show(g: &Global, args: ShowArgs) -> Result<(), CliError> {
    let client = g.connect().await?;
    let dlq = client.dead_letters();
    let stored = get(g, &dlq, args.id).await?;
    let followers = dlq
        .parked_behind(&stored)
        .await
        .map_err(|e| g.streaming_error(&e))?;
    let l = &stored.letter;
    let content_type = l
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(person_metadata::headers::CONTENT_TYPE))
        .map(|(_, v)| v.as_str());
    let decoded = decode_message(&RawMessage {
        subject: Some(&l.subject),
        payload: &l.payload,
        content_type,
        stream_sequence: Some(l.stream_sequence),
    });
    let upcast_from = match &decoded {
        Ok(d) if d.origin == Origin::LegacyV1 => Some("PersonEvent.v1".to_owned()),
        Ok(d) => match d.origin {
            Origin::OlderEnvelope { schema_version } => Some(format!("envelope.v{schema_version}")),
            _ => None,
        },
        Err(_) => None,
    };
    if args.json {
        let (event, error) = match &decoded {
            Ok(d) => (serde_json::to_value(&d.envelope).unwrap_or_default(), None),
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
        print_json(&serde_json::json!({
            "dead_letter": letter_json(&stored),
            "event": event,
            "upcast_from": upcast_from,
            "decode_error": error,
            "parked_followers": followers.iter().map(letter_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let class = class_name(l.error_class);
    println!(
        "dead letter {} (consumer {}, handler {})",
        stored.dlq_sequence, l.consumer, l.handler
    );
    println!(
        "  original:   {} (stream {}, sequence {})",
        l.subject, l.stream, l.stream_sequence
    );
    println!("  event id:   {}", l.event_id.as_deref().unwrap_or("-"));
    println!("  person:     {}", l.person_id.as_deref().unwrap_or("-"));
    println!("  type:       {}", l.event_type.as_deref().unwrap_or("-"));
    println!("failure:");
    println!("  reason:         {}", l.reason);
    println!("  class:          {class}");
    println!("  deliveries:     {}", l.delivery_count);
    println!("  first failure:  {}", time(l.first_failure_at));
    println!("  last failure:   {}", time(l.last_failure_at));
    if !l.attempts.is_empty() {
        println!(
            "attempts ({}, oldest first{}):",
            l.attempts.len(),
            if l.attempts.len() >= person_retry::MAX_ATTEMPTS_KEPT {
                "; only the most recent are kept"
            } else {
                ""
            }
        );
        for a in &l.attempts {
            println!(
                "  {}  delivery {:<3} {:<10} {}",
                time(a.at),
                a.delivery_count,
                class_name(a.class),
                a.reason
            );
        }
    }
    match &stored.body {
        Some(b) if b.loaded => println!(
            "body: kept whole in the bodies bucket (object {}, {})",
            b.name, b.digest
        ),
        Some(b) => println!(
            "body: MISSING from the bodies bucket (object {}, {}): this dead letter cannot be replayed",
            b.name, b.digest
        ),
        None => {}
    }
    println!("headers:");
    if l.headers.is_empty() {
        println!("  (none)");
    }
    for (name, value) in &l.headers {
        println!("  {name}: {value}");
    }
    match &decoded {
        Ok(d) => {
            match &upcast_from {
                Some(from) => println!("event (upcast from {from}):"),
                None => println!("event:"),
            }
            let pretty = serde_json::to_string_pretty(&d.envelope).unwrap_or_default();
            for line in pretty.lines() {
                println!("  {line}");
            }
        }
        Err(e) => {
            println!("event: cannot be decoded ({e}); raw payload:");
            println!("  {}", String::from_utf8_lossy(&l.payload));
        }
    }
    if followers.is_empty() {
        println!("parked behind it: none");
    } else {
        println!(
            "parked behind it ({}; replay them after this one, in order):",
            followers.len()
        );
        for f in &followers {
            println!(
                "  {}  stream sequence {}  {}  event {}",
                f.dlq_sequence,
                f.letter.stream_sequence,
                f.letter.event_type.as_deref().unwrap_or("-"),
                f.letter.event_id.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

async fn get(g: &Global, dlq: &DeadLetterQueue, id: u64) -> Result<StoredDeadLetter, CliError> {
    dlq.get(id).await.map_err(|e| {
        if e.kind() == StreamingErrorKind::NotFound {
            CliError::other(format!("no dead letter with ID {id}"))
                .with_hint("`person-stream dlq list` shows the IDs")
        } else {
            g.streaming_error(&e)
        }
    })
}

/// Checks the choice of dead letters before connecting: IDs, a filter, or `--all`.
fn check_selection(ids: &[u64], filter: &FilterArgs, all: bool) -> Result<(), CliError> {
    let given = [!ids.is_empty(), !filter.is_empty(), all]
        .iter()
        .filter(|g| **g)
        .count();
    match given {
        0 => Err(CliError::usage(
            "choose the dead letters: IDs, a filter (--consumer, --person, --reason, --since, --until), or --all",
        )),
        1 => filter.filter().map(|_| ()),
        _ => Err(CliError::usage(
            "give dead letter IDs, or a filter, or --all; not several",
        )),
    }
}

/// How many dead letters `dlq replay` reads from the DLQ at a time.
const REPLAY_PAGE: usize = 500;

/// Sorts dead letters by original event (oldest first), each once.
fn in_stream_order(mut chosen: Vec<StoredDeadLetter>) -> Vec<StoredDeadLetter> {
    chosen.sort_by(|a, b| {
        (
            a.letter.stream.as_str(),
            a.letter.stream_sequence,
            a.dlq_sequence,
        )
            .cmp(&(
                b.letter.stream.as_str(),
                b.letter.stream_sequence,
                b.dlq_sequence,
            ))
    });
    chosen.dedup_by_key(|s| s.dlq_sequence);
    chosen
}

/// The dead letters a replay goes through, a batch at a time: the given IDs at once,
/// else the DLQ read page by page in DLQ order, up to the last letter stored when the
/// replay started (a replay that fails again is not picked up by the same run).
enum Selection {
    Ids(Vec<u64>),
    Pages {
        filter: DeadLetterFilter,
        after: Option<u64>,
        last: u64,
        done: bool,
    },
}

impl Selection {
    async fn new(
        g: &Global,
        dlq: &DeadLetterQueue,
        ids: &[u64],
        filter: &FilterArgs,
    ) -> Result<(Self, u64), CliError> {
        if !ids.is_empty() {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            let n = ids.len() as u64;
            return Ok((Self::Ids(ids), n));
        }
        let filter = filter.filter()?;
        let last = dlq
            .last_sequence()
            .await
            .map_err(|e| g.streaming_error(&e))?;
        let total = dlq
            .count(&filter)
            .await
            .map_err(|e| g.streaming_error(&e))?;
        Ok((
            Self::Pages {
                filter,
                after: None,
                last,
                done: false,
            },
            total,
        ))
    }

    /// The next batch, sorted by original event; `None` when all were given.
    async fn next(
        &mut self,
        g: &Global,
        dlq: &DeadLetterQueue,
    ) -> Result<Option<Vec<StoredDeadLetter>>, CliError> {
        match self {
            Self::Ids(ids) => {
                if ids.is_empty() {
                    return Ok(None);
                }
                let mut out = Vec::new();
                for id in std::mem::take(ids) {
                    out.push(get(g, dlq, id).await?);
                }
                Ok(Some(in_stream_order(out)))
            }
            Self::Pages {
                filter,
                after,
                last,
                done,
            } => {
                if *done || *last == 0 {
                    return Ok(None);
                }
                let mut page = dlq
                    .page(filter, *after, REPLAY_PAGE)
                    .await
                    .map_err(|e| g.streaming_error(&e))?;
                let before = page.letters.len();
                page.letters.retain(|s| s.dlq_sequence <= *last);
                *after = page.next_after;
                *done = page.next_after.is_none_or(|n| n >= *last) || page.letters.len() < before;
                if page.letters.is_empty() {
                    return Ok(None);
                }
                Ok(Some(in_stream_order(page.letters)))
            }
        }
    }
}

/// Dead letters of the same original message (several consumers gave up on it).
fn groups(chosen: Vec<StoredDeadLetter>) -> Vec<Vec<StoredDeadLetter>> {
    let mut out: Vec<Vec<StoredDeadLetter>> = Vec::new();
    for s in chosen {
        match out.last_mut() {
            Some(group)
                if group[0].letter.stream == s.letter.stream
                    && group[0].letter.stream_sequence == s.letter.stream_sequence
                    && group[0].letter.consumer == s.letter.consumer =>
            {
                group.push(s);
            }
            _ => out.push(vec![s]),
        }
    }
    out
}

async fn replay(g: &Global, args: ReplayArgs) -> Result<(), CliError> {
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(CliError::usage("--rate must be a positive number"));
    }
    check_selection(&args.ids, &args.filter, args.all)?;
    let client = g.connect().await?;
    if let Some(note) = args.filter.group_note(client.config()) {
        eprintln!("{note}");
    }
    let dlq = client.dead_letters();
    let (mut selection, total) = Selection::new(g, &dlq, &args.ids, &args.filter).await?;
    if args.dry_run {
        let mut letters = 0usize;
        let mut events = 0usize;
        let mut header = true;
        while let Some(batch) = selection.next(g, &dlq).await? {
            letters += batch.len();
            let groups = groups(batch);
            events += groups.len();
            if args.json {
                for group in &groups {
                    print_json(&serde_json::json!({
                        "would_replay": group[0].dlq_sequence,
                        "subject": group[0].letter.subject,
                        "original_stream_sequence": group[0].letter.stream_sequence,
                        "also_removes": group[1..].iter().map(|s| s.dlq_sequence).collect::<Vec<_>>(),
                    }));
                }
                continue;
            }
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|group| {
                    let l = &group[0].letter;
                    vec![
                        group
                            .iter()
                            .map(|s| s.dlq_sequence.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        l.stream_sequence.to_string(),
                        l.person_id.clone().unwrap_or_else(|| "-".into()),
                        l.event_type.clone().unwrap_or_else(|| "-".into()),
                        l.subject.clone(),
                    ]
                })
                .collect();
            let text = table(&["ID", "ORIGINAL SEQ", "PERSON", "TYPE", "SUBJECT"], &rows);
            // One table per page read; the header once.
            let skip = usize::from(!header);
            for line in text.lines().skip(skip) {
                println!("{line}");
            }
            header = false;
        }
        if !args.json {
            println!(
                "dry run: would replay {events} event(s) from {letters} dead letter(s), in this order; nothing was changed"
            );
        }
        return Ok(());
    }
    let interrupt = Interrupt::listen();
    let mut progress = Progress::new("replay", Some(total));
    let started = tokio::time::Instant::now();
    let mut seen = 0usize;
    let mut index = 0usize;
    let mut replayed = 0usize;
    let mut removed = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut failed_people: HashSet<String> = HashSet::new();
    let mut skipped = 0usize;
    let mut already = 0usize;
    let mut interrupted = false;
    'pages: while !interrupt.is_set() {
        let Some(batch) = selection.next(g, &dlq).await? else {
            break;
        };
        seen += batch.len();
        for group in groups(batch) {
            if interrupt.is_set() {
                interrupted = true;
                break 'pages;
            }
            if let Some(rate) = args.rate {
                let due = started + Duration::from_secs_f64(index as f64 / rate);
                while tokio::time::Instant::now() < due && !interrupt.is_set() {
                    tokio::time::sleep_until(
                        due.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                    )
                    .await;
                }
                if interrupt.is_set() {
                    interrupted = true;
                    break 'pages;
                }
            }
            index += 1;
            let first = &group[0];
            let person = first
                .letter
                .person_id
                .as_ref()
                .map(|p| format!("{}/{p}", first.letter.consumer));
            if person.as_ref().is_some_and(|p| failed_people.contains(p)) {
                skipped += group.len();
                progress.advance(group.len() as u64);
                continue;
            }
            match dlq.replay(first.dlq_sequence).await {
                Ok(receipt) => {
                    replayed += 1;
                    removed += 1;
                    if receipt.already_replayed {
                        already += 1;
                        if !args.json {
                            progress.note(format!(
                                "dead letter {}: already replayed (stream sequence {}); removed",
                                first.dlq_sequence, receipt.stream_sequence
                            ));
                        }
                    }
                    let mut also = Vec::new();
                    for other in &group[1..] {
                        match dlq.delete(other.dlq_sequence).await {
                            Ok(()) => {
                                removed += 1;
                                also.push(other.dlq_sequence);
                            }
                            Err(e) => failures.push(format!(
                                "dead letter {} (same event as {}): replayed, but cannot delete it: {e}",
                                other.dlq_sequence, first.dlq_sequence
                            )),
                        }
                    }
                    if args.json {
                        print_json(&serde_json::json!({
                            "replayed": first.dlq_sequence,
                            "consumer": first.letter.consumer,
                            "already_replayed": receipt.already_replayed,
                            "stream_sequence": receipt.stream_sequence,
                            "original_stream_sequence": first.letter.stream_sequence,
                            "person_id": first.letter.person_id,
                            "event_type": first.letter.event_type,
                            "also_removed": also,
                        }));
                        let _ = std::io::stdout().flush();
                    }
                }
                Err(e) => {
                    failures.push(format!("dead letter {}: {e}", first.dlq_sequence));
                    if let Some(p) = person {
                        failed_people.insert(p);
                    }
                }
            }
            progress.advance(group.len() as u64);
        }
    }
    interrupted |= interrupt.is_set() && !selection_done(&selection);
    progress.finish();
    // The letters chosen: counted at the start, or all those read if more came.
    let letters = (total as usize).max(seen);
    let left = letters - removed;
    if args.json {
        print_json(&serde_json::json!({
            "replayed_events": replayed,
            "already_replayed": already,
            "removed_dead_letters": removed,
            "left_in_dlq": left,
            "failures": failures,
            "skipped_after_failure": skipped,
            "interrupted": interrupted,
        }));
    } else {
        println!("replayed {replayed} event(s), removed {removed} of {letters} dead letter(s)");
        if already > 0 {
            println!("  {already} of them had been replayed already: nothing new was stored");
        }
        for f in &failures {
            println!("  failed: {f}");
        }
        if skipped > 0 {
            println!(
                "  left {skipped} dead letter(s) of people whose earlier replay failed, to keep their order"
            );
        }
    }
    if interrupted {
        return Err(CliError::new(
            CliErrorKind::Interrupted,
            format!("interrupted: {left} dead letter(s) not replayed, still in the DLQ; none is half-replayed"),
        )
        .with_hint("run the same command again to replay the rest"));
    }
    if !failures.is_empty() || skipped > 0 {
        return Err(CliError::new(
            CliErrorKind::Partial,
            format!(
                "{} replay(s) failed; {left} dead letter(s) left in the DLQ",
                failures.len()
            ),
        ));
    }
    Ok(())
}

/// `true` once a selection has given every batch.
fn selection_done(selection: &Selection) -> bool {
    match selection {
        Selection::Ids(ids) => ids.is_empty(),
        Selection::Pages { done, last, .. } => *done || *last == 0,
    }
}

async fn purge(g: &Global, args: PurgeArgs) -> Result<(), CliError> {
    check_selection(&args.ids, &args.filter, args.all)?;
    let client = g.connect().await?;
    if let Some(note) = args.filter.group_note(client.config()) {
        eprintln!("{note}");
    }
    let dlq = client.dead_letters();
    let mut ids = args.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let filter = args.filter.filter()?;
    // How many: the IDs given (each checked to exist), or a count that loads no list.
    let chosen = if ids.is_empty() {
        dlq.count(&filter)
            .await
            .map_err(|e| g.streaming_error(&e))?
    } else {
        for id in &ids {
            get(g, &dlq, *id).await?;
        }
        ids.len() as u64
    };
    if chosen == 0 {
        println!("no dead letters match; nothing to purge");
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "refusing to purge {chosen} dead letter(s) without confirmation"
            ))
            .with_hint("pass --yes, or run it in a terminal to be asked"));
        }
        eprint!("purge {chosen} dead letter(s)? this cannot be undone [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            println!("nothing purged");
            return Ok(());
        }
    }
    let interrupt = Interrupt::listen();
    let mut progress = Progress::new("purge", Some(chosen));
    let mut purged = 0usize;
    let mut failures = Vec::new();
    let mut stopped = false;
    if ids.is_empty() {
        // Read and deleted in bounded batches, as they come.
        purged = dlq
            .purge_with(&filter, |seq, result| {
                if let Err(e) = result {
                    failures.push(format!("dead letter {seq}: {e}"));
                }
                progress.advance(1);
                stopped = interrupt.is_set();
                !stopped
            })
            .await
            .map_err(|e| g.streaming_error(&e))?;
    } else {
        for id in &ids {
            if interrupt.is_set() {
                stopped = true;
                break;
            }
            match dlq.delete(*id).await {
                Ok(()) => purged += 1,
                Err(e) => failures.push(format!("dead letter {id}: {e}")),
            }
            progress.advance(1);
        }
    }
    progress.finish();
    // More may have come while purging: never report fewer chosen than purged.
    let chosen = (chosen as usize).max(purged + failures.len());
    println!("purged {purged} of {chosen} dead letter(s)");
    for f in &failures {
        println!("  failed: {f}");
    }
    if stopped && purged + failures.len() < chosen {
        return Err(CliError::new(
            CliErrorKind::Interrupted,
            format!("interrupted: {} dead letter(s) not purged", chosen - purged),
        ));
    }
    if !failures.is_empty() {
        return Err(CliError::new(
            CliErrorKind::Partial,
            format!("{} dead letter(s) could not be purged", failures.len()),
        ));
    }
    Ok(())
}
