//! `status`: streams, consumers and dead-letter counts.

use chrono::Utc;
use person_cli::error::CliError;
use person_cli::format::{ago, bytes, table, time, truncate};
use person_streaming::DeadLetterFilter;

use super::{Global, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream status
  person-stream status --json | jq '.streams[0].messages'

For each stream: messages, bytes, first and last sequence. For each consumer: pending
(not delivered yet), ack pending (delivered, not acknowledged), redelivered, and its last
activity; a paused consumer is marked, with the time it resumes. For each consumer with
partitions, its group: each partition's owner, lag (pending), ack pending and pause
state, and the members with a heartbeat. Then the dead letters, counted by consumer and
reason.";

/// `status` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Also list ephemeral consumers (readers such as a running `tail` or a recent DLQ
    /// listing, removed by the server once idle).
    #[arg(long)]
    all_consumers: bool,
}

pub(crate) async fn run(g: &Global, args: Args) -> Result<(), CliError> {
    let client = g.connect().await?;
    let streams = client.status().await.map_err(|e| g.streaming_error(&e))?;
    // A missing DLQ stream is a row saying so, not a failure: that is when one looks.
    let dlq_exists = streams.get(1).is_none_or(|s| s.exists);
    let counts = if dlq_exists {
        client
            .dead_letters()
            .counts(&DeadLetterFilter::default())
            .await
            .map_err(|e| g.streaming_error(&e))?
    } else {
        Vec::new()
    };
    // Each partitioned consumer's group: partition owners, lag and pause state.
    let mut groups = Vec::new();
    if streams.first().is_some_and(|s| s.exists) {
        for c in client
            .config()
            .consumers
            .iter()
            .filter(|c| c.partitions > 1)
        {
            groups.push(
                client
                    .group_status(&c.durable_name)
                    .await
                    .map_err(|e| g.streaming_error(&e))?,
            );
        }
    }
    if args.json {
        let streams: Vec<_> = streams
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "exists": s.exists,
                    "messages": s.messages,
                    "bytes": s.bytes,
                    "first_sequence": s.first_sequence,
                    "last_sequence": s.last_sequence,
                    "consumers": s.consumers.iter().map(|c| serde_json::json!({
                        "name": c.name,
                        "exists": c.exists,
                        "durable": c.durable,
                        "pending": c.pending,
                        "ack_pending": c.ack_pending,
                        "redelivered": c.redelivered,
                        "waiting": c.waiting,
                        "delivered_stream_sequence": c.delivered_stream_sequence,
                        "ack_floor_stream_sequence": c.ack_floor_stream_sequence,
                        "last_active": c.last_active.map(time),
                        "paused": c.paused,
                        "paused_until": c.paused_until.map(time),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let dead_letters: Vec<_> = counts
            .iter()
            .map(|c| serde_json::json!({"consumer": c.consumer, "reason": c.reason, "count": c.count}))
            .collect();
        let groups: Vec<_> = groups
            .iter()
            .map(|gs| {
                serde_json::json!({
                    "group": gs.group,
                    "partitions": gs.partitions,
                    "members": gs.members.iter().map(|(m, at)| serde_json::json!({"instance": m, "heartbeat": time(*at)})).collect::<Vec<_>>(),
                    "slots": gs.slots.iter().map(|s| serde_json::json!({
                        "partition": s.partition,
                        "consumer": s.consumer.name,
                        "owner": s.owner,
                        "pending": s.consumer.pending,
                        "ack_pending": s.consumer.ack_pending,
                        "paused": s.consumer.paused,
                        "paused_until": s.consumer.paused_until.map(time),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(
            &serde_json::json!({"streams": streams, "groups": groups, "dead_letters": dead_letters}),
        );
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = streams
        .iter()
        .map(|s| {
            if !s.exists {
                return vec![
                    format!("{} (missing: `person-stream setup` creates it)", s.name),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            vec![
                s.name.clone(),
                s.messages.to_string(),
                bytes(s.bytes),
                s.first_sequence.to_string(),
                s.last_sequence.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["STREAM", "MESSAGES", "BYTES", "FIRST SEQ", "LAST SEQ"],
            &rows
        )
    );
    let hidden: usize = streams
        .iter()
        .map(|s| s.consumers.iter().filter(|c| !c.durable).count())
        .sum();
    let rows: Vec<Vec<String>> = streams
        .iter()
        .flat_map(|s| {
            s.consumers
                .iter()
                .filter(|c| c.durable || args.all_consumers)
                .map(|c| {
                    if !c.exists {
                        return vec![
                            s.name.clone(),
                            format!("{} (missing: `person-stream setup` creates it)", c.name),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ];
                    }
                    vec![
                        s.name.clone(),
                        if !c.durable {
                            format!("{} (ephemeral reader)", c.name)
                        } else if c.paused {
                            format!("{} (paused)", c.name)
                        } else {
                            c.name.clone()
                        },
                        c.pending.to_string(),
                        c.ack_pending.to_string(),
                        c.redelivered.to_string(),
                        ago(c.last_active, now),
                    ]
                })
        })
        .collect();
    if rows.is_empty() {
        println!("no consumers");
    } else {
        print!(
            "{}",
            table(
                &[
                    "STREAM",
                    "CONSUMER",
                    "PENDING",
                    "ACK PENDING",
                    "REDELIVERED",
                    "LAST ACTIVE"
                ],
                &rows
            )
        );
    }
    for s in &streams {
        for c in s.consumers.iter().filter(|c| c.paused) {
            match c.paused_until {
                Some(_) if c.is_paused_indefinitely() => println!(
                    "paused: {} until resumed (`person-stream consumer resume {}`)",
                    c.name, c.name
                ),
                Some(t) => println!("paused: {} until {} (resumes by itself)", c.name, time(t)),
                None => println!("paused: {}", c.name),
            }
        }
    }
    for gs in &groups {
        println!();
        let rows: Vec<Vec<String>> = gs
            .slots
            .iter()
            .map(|slot| {
                vec![
                    slot.partition
                        .map_or("before partitions".to_owned(), |p| p.to_string()),
                    slot.consumer.name.clone(),
                    slot.owner.clone().unwrap_or_else(|| "-".into()),
                    slot.consumer.pending.to_string(),
                    slot.consumer.ack_pending.to_string(),
                    if slot.consumer.paused {
                        slot.consumer
                            .paused_until
                            .map_or("paused".into(), |t| format!("until {}", time(t)))
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        println!(
            "group {} ({} partitions, {} member(s) with a heartbeat)",
            gs.group,
            gs.partitions,
            gs.members.len()
        );
        print!(
            "{}",
            table(
                &[
                    "PARTITION",
                    "CONSUMER",
                    "OWNER",
                    "LAG",
                    "ACK PENDING",
                    "PAUSED"
                ],
                &rows
            )
        );
        for (m, at) in &gs.members {
            println!("member {m}: last heartbeat {}", ago(Some(*at), now));
        }
    }
    if hidden > 0 && !args.all_consumers {
        println!("({hidden} ephemeral reader(s) not shown; --all-consumers lists them)");
    }
    println!();
    if !dlq_exists {
        println!("dead letters: the DLQ stream does not exist (`person-stream setup` creates it)");
    } else if counts.is_empty() {
        println!("dead letters: none");
    } else {
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|c| {
                vec![
                    c.consumer.clone(),
                    c.count.to_string(),
                    truncate(&c.reason, 80),
                ]
            })
            .collect();
        print!("{}", table(&["DLQ CONSUMER", "COUNT", "REASON"], &rows));
    }
    Ok(())
}
