//! A projection that is idempotent on the event id: delivering the same events again
//! (here: a second consumer reading the stream from the start into the same store)
//! changes nothing.
//!
//! Run with `cargo run --example projection_handler`. With `NATS_URL` it works in a namespace
//! of its own and deletes it at the end (see `person_examples::Scope`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use person_events::{EventId, PersonEventV2, PersonId, StreamingEventEnvelope};
use person_examples::Scope;
use person_metadata::EventMetadata;
use person_streaming::{ConsumerSettings, StreamingClient, StreamingConfig};
use person_subscriptions::{DomainResult, StreamingEventHandler, SubscriptionManager};

/// The projection's store, shared by every handler instance that writes to it.
#[derive(Default)]
struct Store {
    applied: HashSet<EventId>,
    status: HashMap<PersonId, String>,
    skipped: usize,
}

struct StatusProjection {
    store: Arc<Mutex<Store>>,
}

#[async_trait]
impl StreamingEventHandler for StatusProjection {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        let mut store = self.store.lock().expect("store");
        // The idempotency key is the event id; record it with the change, atomically.
        if !store.applied.insert(envelope.event_id) {
            store.skipped += 1;
            return Ok(());
        }
        let status = match &envelope.event {
            PersonEventV2::Suspended { .. } => "suspended",
            _ => "active",
        };
        store
            .status
            .insert(envelope.aggregate_id, status.to_owned());
        Ok(())
    }

    fn name(&self) -> &str {
        "status"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let config = StreamingConfig {
        consumers: vec![
            ConsumerSettings::new("status-a", &["person.events.>"], "status projection"),
            ConsumerSettings::new(
                "status-b",
                &["person.events.>"],
                "the same projection, again",
            ),
        ],
        ..StreamingConfig::default()
    };
    person_examples::run_in_scope("projection_handler", config, run).await
}

async fn run(scope: &Scope, client: &StreamingClient) -> Result<()> {
    for _ in 0..10 {
        let person_id = PersonId::new();
        let event = PersonEventV2::Suspended {
            person_id,
            reason: "review".into(),
            metadata: EventMetadata::new(),
        };
        client
            .publisher()
            .publish(&StreamingEventEnvelope::new(person_id, 1, event))
            .await?;
    }

    let store = Arc::new(Mutex::new(Store::default()));
    for consumer in [scope.consumer("status-a"), scope.consumer("status-b")] {
        let mut manager = SubscriptionManager::new(client.clone());
        manager.register_handler(Arc::new(StatusProjection {
            store: store.clone(),
        }));
        let handle = manager.start_consumer(&consumer).await?;
        person_examples::wait_until(30, "handling the 10 events", || {
            handle.stats().processed >= 10
        })
        .await?;
        handle.shutdown(Duration::from_secs(5)).await;
    }
    let store = store.lock().expect("store");
    println!(
        "20 deliveries: {} events applied, {} skipped as already applied; {} people suspended",
        store.applied.len(),
        store.skipped,
        store.status.values().filter(|s| *s == "suspended").count()
    );
    Ok(())
}
