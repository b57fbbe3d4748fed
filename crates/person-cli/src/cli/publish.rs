//! `publish`: events from an NDJSON file or stdin.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;

use async_nats::header::{self, HeaderMap, HeaderValue};
use futures::StreamExt;
use person_cli::error::{CliError, CliErrorKind};
use person_cli::input::{Item, Line, parse_ndjson};
use person_cli::progress::Progress;
use person_events::{PersonId, StreamingEventEnvelope};
use person_streaming::{ExpectedVersion, PublishErrorKind, StreamingClient};

use super::{Global, Interrupt, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream publish events.ndjson
  person-stream tail --person 0f8fad5b-d9cb-469f-a165-70867728950e --no-follow --json > p.ndjson
  person-stream publish p.ndjson                     # again inside the dedup window: duplicates
  cat legacy-v1.ndjson | person-stream publish -     # raw V1 events, stored as they are
  person-stream publish --check-version import.ndjson

One event per line: a V2 envelope (as written by the publisher, or a line of `tail
--json`), a bare V2 event ({\"event_type\": \"Created\", \"data\": {...}}, wrapped in a new
envelope), or a raw V1 event ({\"PersonCreated\": {...}}, stored byte for byte with its
legacy event id as dedup id). Lines that are not events are reported with their line
number; the other lines are still published. The event id is the dedup id: a repeat
inside the stream's duplicate window (2 minutes by default) is reported as a duplicate
and not stored; after the window it is stored again.

--check-version: optimistic concurrency. Each person's events are appended one at a time,
each expecting the person's version left by the one before; a person's first event
expects no events at all when its envelope `sequence` is 1, else the version read when
the import reaches it. After a conflict the person's remaining lines are rejected, not
published out of order. Raw V1 lines are published without the check.";

/// `publish` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// NDJSON file to read; `-` or nothing reads stdin.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Check each person's version (optimistic concurrency); see below.
    #[arg(long)]
    check_version: bool,
    /// Print the summary as one JSON document, with one result per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug)]
enum Outcome {
    Stored { seq: u64 },
    Duplicate { seq: u64 },
    Rejected { reason: String },
}

#[derive(Debug)]
struct Result1 {
    line: usize,
    event_id: Option<String>,
    outcome: Outcome,
}

pub(crate) async fn run(g: &Global, args: Args) -> Result<(), CliError> {
    let text = read_input(args.file.as_ref())?;
    let (lines, errors) = parse_ndjson(&text);
    let mut results: Vec<Result1> = errors
        .into_iter()
        .map(|e| Result1 {
            line: e.number,
            event_id: None,
            outcome: Outcome::Rejected { reason: e.message },
        })
        .collect();
    let client = g.connect().await?;
    let interrupt = Interrupt::listen();
    let mut progress = Progress::new("publish", Some(lines.len() as u64));
    let total = lines.len();
    let done = if args.check_version {
        publish_checked(&client, lines, &mut results, &mut progress, &interrupt).await
    } else {
        publish_pipelined(&client, lines, &mut results, &mut progress, &interrupt).await
    };
    progress.finish();
    results.sort_by_key(|r| r.line);
    report(&results, args.json);
    let rejected = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Rejected { .. }))
        .count();
    if done < total {
        return Err(CliError::new(
            CliErrorKind::Interrupted,
            format!(
                "interrupted: {done} of {total} events handled; the lines after them were not published"
            ),
        )
        .with_hint("publishing the same input again is safe: stored events come back as duplicates"));
    }
    if rejected > 0 {
        return Err(CliError::new(
            CliErrorKind::Partial,
            format!("{rejected} line(s) rejected; the others were published"),
        ));
    }
    Ok(())
}

fn read_input(file: Option<&PathBuf>) -> Result<String, CliError> {
    let mut text = String::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            text = std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
        }
    }
    Ok(text)
}

/// Publishes in input order, consecutive envelopes pipelined. Returns how many lines
/// were handled (fewer than all after Ctrl-C).
async fn publish_pipelined(
    client: &StreamingClient,
    lines: Vec<Line>,
    results: &mut Vec<Result1>,
    progress: &mut Progress,
    interrupt: &Interrupt,
) -> usize {
    let publisher = client.publisher();
    let mut handled = 0;
    let mut rest = lines.into_iter().peekable();
    while rest.peek().is_some() {
        if interrupt.is_set() {
            break;
        }
        let mut batch: Vec<(usize, StreamingEventEnvelope)> = Vec::new();
        while batch.len() < 500 {
            match rest.peek() {
                Some(Line {
                    item: Item::Envelope(_),
                    ..
                }) => {
                    if let Some(Line {
                        number,
                        item: Item::Envelope(env),
                    }) = rest.next()
                    {
                        batch.push((number, env));
                    }
                }
                _ => break,
            }
        }
        if batch.is_empty() {
            if let Some(line) = rest.next() {
                let r = publish_raw(client, &line).await;
                results.push(r);
                handled += 1;
                progress.advance(1);
            }
            continue;
        }
        let numbers: Vec<(usize, String)> = batch
            .iter()
            .map(|(n, e)| (*n, e.event_id.to_string()))
            .collect();
        let envelopes: Vec<StreamingEventEnvelope> = batch.into_iter().map(|(_, e)| e).collect();
        let outcomes: Vec<_> = publisher.publish_all(envelopes).collect().await;
        for ((line, event_id), outcome) in numbers.into_iter().zip(outcomes) {
            let outcome = match outcome {
                Ok(r) if r.duplicate => Outcome::Duplicate {
                    seq: r.stream_sequence,
                },
                Ok(r) => Outcome::Stored {
                    seq: r.stream_sequence,
                },
                Err(e) => Outcome::Rejected {
                    reason: e.to_string(),
                },
            };
            results.push(Result1 {
                line,
                event_id: Some(event_id),
                outcome,
            });
            handled += 1;
            progress.advance(1);
        }
    }
    handled
}

/// A raw V1 event, byte for byte, deduplicated by its legacy event id.
async fn publish_raw(client: &StreamingClient, line: &Line) -> Result1 {
    let Item::LegacyV1 {
        subject,
        event_id,
        payload,
        ..
    } = &line.item
    else {
        return Result1 {
            line: line.number,
            event_id: None,
            outcome: Outcome::Rejected {
                reason: "not a raw V1 event".into(),
            },
        };
    };
    let subject = client.config().subjects().qualify(subject);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::NATS_MESSAGE_ID,
        HeaderValue::from(event_id.to_string().as_str()),
    );
    let sent = client
        .jetstream()
        .publish_with_headers(subject.clone(), headers, payload.clone().into())
        .await;
    let outcome = match sent {
        Ok(ack) => match ack.await {
            Ok(ack) if ack.duplicate => Outcome::Duplicate { seq: ack.sequence },
            Ok(ack) => Outcome::Stored { seq: ack.sequence },
            Err(e) => Outcome::Rejected {
                reason: format!("the server did not store it on {subject}: {e}"),
            },
        },
        Err(e) => Outcome::Rejected {
            reason: format!("cannot publish to {subject}: {e}"),
        },
    };
    Result1 {
        line: line.number,
        event_id: Some(event_id.to_string()),
        outcome,
    }
}

/// One event at a time, each person's version checked.
async fn publish_checked(
    client: &StreamingClient,
    lines: Vec<Line>,
    results: &mut Vec<Result1>,
    progress: &mut Progress,
    interrupt: &Interrupt,
) -> usize {
    let publisher = client.publisher();
    let reader = client.reader();
    let mut versions: HashMap<PersonId, u64> = HashMap::new();
    let mut failed: HashSet<PersonId> = HashSet::new();
    let mut handled = 0;
    for line in lines {
        if interrupt.is_set() {
            break;
        }
        let person = line.item.envelope().aggregate_id;
        let event_id = Some(line.item.envelope().event_id.to_string());
        let outcome = if failed.contains(&person) {
            Outcome::Rejected {
                reason: format!(
                    "skipped: an earlier line of person {person} was rejected, so this one would apply out of order"
                ),
            }
        } else {
            match &line.item {
                Item::LegacyV1 { .. } => {
                    versions.remove(&person);
                    let r = publish_raw(client, &line).await;
                    r.outcome
                }
                Item::Envelope(env) => {
                    let expected = match versions.get(&person) {
                        Some(v) => Ok(ExpectedVersion::Exactly(*v)),
                        None if env.sequence == 1 => Ok(ExpectedVersion::NoEvents),
                        None => reader.last_version(person).await.map(|v| {
                            if v == 0 {
                                ExpectedVersion::NoEvents
                            } else {
                                ExpectedVersion::Exactly(v)
                            }
                        }),
                    };
                    match expected {
                        Err(e) => Outcome::Rejected {
                            reason: format!("cannot read the version of person {person}: {e}"),
                        },
                        Ok(expected) => {
                            match publisher
                                .append(person, expected, std::slice::from_ref(env))
                                .await
                            {
                                Ok(r) => {
                                    versions.insert(person, r.version);
                                    let seq = r.version;
                                    if r.events.first().is_some_and(|e| e.duplicate) {
                                        Outcome::Duplicate { seq }
                                    } else {
                                        Outcome::Stored { seq }
                                    }
                                }
                                Err(e) => {
                                    if e.kind() == PublishErrorKind::Conflict {
                                        failed.insert(person);
                                    }
                                    Outcome::Rejected {
                                        reason: e.to_string(),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        results.push(Result1 {
            line: line.number,
            event_id,
            outcome,
        });
        handled += 1;
        progress.advance(1);
    }
    handled
}

fn report(results: &[Result1], json: bool) {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let stored = count(|o| matches!(o, Outcome::Stored { .. }));
    let duplicate = count(|o| matches!(o, Outcome::Duplicate { .. }));
    let rejected = count(|o| matches!(o, Outcome::Rejected { .. }));
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                let (outcome, seq, reason) = match &r.outcome {
                    Outcome::Stored { seq } => ("stored", Some(*seq), None),
                    Outcome::Duplicate { seq } => (
                        "duplicate",
                        Some(*seq),
                        Some(format!("event id already stored at stream sequence {seq}")),
                    ),
                    Outcome::Rejected { reason } => ("rejected", None, Some(reason.clone())),
                };
                serde_json::json!({
                    "line": r.line,
                    "outcome": outcome,
                    "event_id": r.event_id,
                    "stream_sequence": seq,
                    "reason": reason,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "stored": stored,
            "duplicate": duplicate,
            "rejected": rejected,
            "results": rows,
        }));
        return;
    }
    println!("stored {stored}, duplicate {duplicate}, rejected {rejected}");
    if duplicate > 0 {
        println!("duplicates (already stored, nothing new written):");
        for r in results {
            if let Outcome::Duplicate { seq } = &r.outcome {
                println!(
                    "  line {}: event {} is already stored at stream sequence {seq}",
                    r.line,
                    r.event_id.as_deref().unwrap_or("?")
                );
            }
        }
    }
    if rejected > 0 {
        println!("rejected:");
        for r in results {
            if let Outcome::Rejected { reason } = &r.outcome {
                println!("  line {}: {reason}", r.line);
            }
        }
    }
}
