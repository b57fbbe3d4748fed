//! A 3-node JetStream cluster with an R3 stream that keeps going while a node is killed.
//!
//! Starts its own cluster on loopback (it ignores `NATS_URL`).
//!
//! Run with `cargo run --example cluster`.

use std::time::Duration;

use anyhow::{Context, Result};
use nats_harness::NatsCluster;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};

#[tokio::main]
async fn main() -> Result<()> {
    let mut cluster = NatsCluster::start(3)
        .await
        .context("starting a 3-node cluster")?;
    println!("3-node cluster on {}", cluster.urls().join(", "));
    let mut config = StreamingConfig::default();
    config.stream.replicas = 3;
    config.dlq.replicas = 3;
    for c in &mut config.consumers {
        c.max_ack_pending = 1000;
    }
    // Connect through every node, so losing one is only a reconnect.
    let client = StreamingClient::new(&cluster.urls().join(","), config).await?;
    let publisher = client.publisher();
    let person_id = PersonId::new();
    let event = |n: u64| {
        StreamingEventEnvelope::new(
            person_id,
            n,
            PersonEventV2::Activated {
                person_id,
                reason: format!("step {n}"),
                metadata: EventMetadata::new(),
            },
        )
    };
    for n in 1..=50 {
        publisher.publish(&event(n)).await?;
    }
    let victim = 2;
    cluster.kill(victim).context("killing a node")?;
    println!(
        "killed node {} ({})",
        victim + 1,
        cluster.server_name(victim)
    );
    for n in 51..=100 {
        // Transient failures during a leader election are retried by the publisher.
        publisher.publish(&event(n)).await?;
    }
    let history = client.reader().load_aggregate(person_id).await?;
    println!(
        "published 100 events across the node loss; the stream holds {}",
        history.len()
    );
    cluster.start_again(victim).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("node {} is back and catches up as a replica", victim + 1);
    Ok(())
}
