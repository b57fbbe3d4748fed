//! Retry, then the DLQ, then inspecting and replaying it.
//!
//! One event fails twice with a transient error and succeeds on its third delivery;
//! another fails permanently and is dead-lettered. After the handler is fixed, the dead
//! letter is replayed and handled.
//!
//! Run with `cargo run --example retry_and_dlq`. With `NATS_URL` it works in a namespace
//! of its own and deletes it at the end (see `person_examples::Scope`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_examples::Scope;
use person_metadata::EventMetadata;
use person_retry::RetryPolicy;
use person_streaming::{DeadLetterFilter, StreamingClient, StreamingConfig};
use person_subscriptions::{
    DeadLetterPolicy, DomainResult, HandlerError, StreamingEventHandler, SubscriptionManager,
    SubscriptionOptions,
};

struct Flaky {
    calls: AtomicU32,
    fixed: AtomicBool,
    handled: AtomicU32,
}

#[async_trait]
impl StreamingEventHandler for Flaky {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        let PersonEventV2::Suspended { reason, .. } = &envelope.event else {
            return Ok(());
        };
        match reason.as_str() {
            "flaky" if self.calls.fetch_add(1, Ordering::SeqCst) < 2 => {
                println!("  flaky event: downstream busy, will be retried");
                Err(HandlerError::transient("downstream busy"))
            }
            "poison" if !self.fixed.load(Ordering::SeqCst) => {
                println!("  poison event: rejected permanently");
                Err(HandlerError::permanent("reason code not recognised"))
            }
            other => {
                println!("  handled `{other}`");
                self.handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    fn name(&self) -> &str {
        "flaky"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut config = StreamingConfig::default();
    let summary = &mut config.consumers[0];
    summary.retry = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_secs(2))
        .build()?;
    person_examples::run_in_scope("retry_and_dlq", config, run).await
}

async fn run(scope: &Scope, client: &StreamingClient) -> Result<()> {
    let consumer = scope.consumer("person-projection-summary");
    for reason in ["flaky", "poison", "fine"] {
        let person_id = PersonId::new();
        let event = PersonEventV2::Suspended {
            person_id,
            reason: reason.into(),
            metadata: EventMetadata::new(),
        };
        client
            .publisher()
            .publish(&StreamingEventEnvelope::new(person_id, 1, event))
            .await?;
    }

    let handler = Arc::new(Flaky {
        calls: AtomicU32::new(0),
        fixed: AtomicBool::new(false),
        handled: AtomicU32::new(0),
    });
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().dead_letter_policy(DeadLetterPolicy::Park));
    manager.register_handler(handler.clone());
    let handle = manager.start_consumer(&consumer).await?;
    person_examples::wait_until(60, "two events handled and one dead-lettered", || {
        handler.handled.load(Ordering::SeqCst) >= 2 && handle.stats().dead_lettered >= 1
    })
    .await?;
    println!(
        "retried {} times, dead-lettered {}",
        handle.stats().retried,
        handle.stats().dead_lettered
    );

    let dlq = client.dead_letters();
    for stored in dlq.list(&DeadLetterFilter::default()).await? {
        let l = &stored.letter;
        println!(
            "DLQ #{}: {} (stream seq {}, {} delivery, consumer {}): {}",
            stored.dlq_sequence,
            l.subject,
            l.stream_sequence,
            l.delivery_count,
            l.consumer,
            l.reason
        );
        handler.fixed.store(true, Ordering::SeqCst);
        let receipt = dlq.replay(stored.dlq_sequence).await?;
        println!("replayed to stream sequence {}", receipt.stream_sequence);
    }
    person_examples::wait_until(30, "the replayed event handled", || {
        handler.handled.load(Ordering::SeqCst) >= 3
    })
    .await?;
    println!(
        "all 3 handled; the DLQ now holds {}",
        dlq.list(&DeadLetterFilter::default()).await?.len()
    );
    handle.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
