//! `bench`: a quick publish/consume benchmark on a throwaway stream.

use std::time::{Duration, Instant};

use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use person_cli::error::CliError;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope, codec};
use person_legacy_compat::{RawMessage, decode_message};
use person_metadata::EventMetadata;

use super::{Global, print_json};

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream bench
  person-stream bench --count 100000 --json

Creates a throwaway in-memory stream (PERSON_BENCH_<random>, subjects
person-bench.<random>.>), publishes N encoded events with up to 256 acks outstanding,
reads them back through an ordered consumer decoding each one, prints events/s for both,
and deletes the stream. The Person streams and consumers are not touched.";

/// `bench` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Events to publish and consume.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Print the figures as one JSON document.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(g: &Global, args: Args) -> Result<(), CliError> {
    if args.count == 0 {
        return Err(CliError::usage("--count must be at least 1"));
    }
    let client = g.connect().await?;
    let js = client.jetstream().clone();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let name = format!("PERSON_BENCH_{tag}");
    let prefix = format!("person-bench.{tag}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .map_err(|e| CliError::other(format!("cannot create the benchmark stream {name}: {e}")))?;
    let result = measure(&js, &name, &prefix, args.count).await;
    let deleted = js.delete_stream(&name).await;
    let (publish, consume) = result?;
    if let Err(e) = deleted {
        eprintln!("warning: cannot delete the benchmark stream {name}: {e}");
    }
    let rate = |d: Duration| args.count as f64 / d.as_secs_f64().max(1e-9);
    if args.json {
        print_json(&serde_json::json!({
            "events": args.count,
            "publish_secs": publish.as_secs_f64(),
            "publish_events_per_sec": rate(publish),
            "consume_secs": consume.as_secs_f64(),
            "consume_events_per_sec": rate(consume),
        }));
    } else {
        println!(
            "published {} events in {:.2} s: {:.0} events/s",
            args.count,
            publish.as_secs_f64(),
            rate(publish)
        );
        println!(
            "consumed and decoded {} events in {:.2} s: {:.0} events/s",
            args.count,
            consume.as_secs_f64(),
            rate(consume)
        );
        println!("benchmark stream {name} deleted");
    }
    Ok(())
}

async fn measure(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    count: usize,
) -> Result<(Duration, Duration), CliError> {
    let people: Vec<PersonId> = (0..100).map(|_| PersonId::new()).collect();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..count {
        let person = people[i % people.len()];
        let env = StreamingEventEnvelope::new(
            person,
            (i / people.len()) as u64 + 1,
            PersonEventV2::Activated {
                person_id: person,
                reason: format!("bench {i}"),
                metadata: EventMetadata::new(),
            },
        );
        let payload = codec::encode(&env)
            .map_err(|e| CliError::other(format!("cannot encode a benchmark event: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_MESSAGE_ID,
            HeaderValue::from(env.event_id.to_string().as_str()),
        );
        let ack = js
            .publish_with_headers(
                format!("{prefix}.{person}.activated"),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| CliError::other(format!("benchmark publish failed: {e}")))?;
        in_flight.push(ack.into_future());
        while in_flight.len() >= 256 {
            if let Some(r) = in_flight.next().await {
                r.map_err(|e| CliError::other(format!("benchmark publish not acknowledged: {e}")))?;
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r.map_err(|e| CliError::other(format!("benchmark publish not acknowledged: {e}")))?;
    }
    let publish = started.elapsed();

    let started = Instant::now();
    let stream = js
        .get_stream_no_info(name)
        .await
        .map_err(|e| CliError::other(format!("cannot open {name}: {e}")))?;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| CliError::other(format!("cannot read {name}: {e}")))?;
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| CliError::other(format!("cannot read {name}: {e}")))?;
    let mut seen = 0;
    while seen < count {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| CliError::other(format!("reading {name} stalled after {seen} events")))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| CliError::other(format!("reading {name} failed: {e}")))?;
        decode_message(&RawMessage::from_payload(&msg.payload))
            .map_err(|e| CliError::other(format!("a benchmark event does not decode: {e}")))?;
        seen += 1;
    }
    Ok((publish, started.elapsed()))
}
