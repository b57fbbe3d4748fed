//! The main example: the whole product on one server.
//!
//! 1. Sets up the event stream, the DLQ stream and the consumers from
//!    `StreamingConfig::default()`.
//! 2. Publishes about 1,000 lifecycle events for 100 people (each person's events as one
//!    atomic append with an expected version, with correlation and causation chains),
//!    re-publishes some to show dedup, and adds 50 legacy V1 events as raw JSON.
//! 3. Runs two projections through `SubscriptionManager`: a summary (idempotent on the
//!    event id, with some transient failures that are retried) and a search index (with
//!    one poison event that ends in the DLQ, parking that person's later events).
//! 4. "Fixes" the search handler, replays the DLQ, and shows the person's events applied
//!    in order.
//!
//! Run with `cargo run --example streaming_setup`. Without `NATS_URL` it starts a
//! throwaway local nats-server and uses the default names. With `NATS_URL` it works in
//! a namespace of its own (see `person_examples::Scope`): streams
//! `EXAMPLE_streaming_setup_<run>` and `..._DLQ`, consumers `example-<run>-...`, and
//! the subject prefix `example_streaming_setup_<run>`; it deletes them at the end,
//! also after a failure. It never reads, acks, replays or deletes anything else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures::StreamExt;
use person_events::{
    ComponentType, EventId, MergeReason, PersonEventV2, PersonId, PersonName,
    StreamingEventEnvelope,
};
use person_examples::{Scope, StatusLine};
use person_legacy_compat::UPCAST_CONTEXT_KEY;
use person_metadata::EventMetadata;
use person_streaming::{DeadLetterFilter, ExpectedVersion, StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, HandlerError, Stats, StreamingEventHandler, SubscriptionManager,
    SubscriptionOptions,
};

const PEOPLE: usize = 100;
const LEGACY_PEOPLE: usize = 10;

#[tokio::main]
async fn main() -> Result<()> {
    person_examples::run_in_scope(
        "streaming_setup",
        StreamingConfig::default(),
        async |scope, client| run(scope, client).await,
    )
    .await
}

async fn run(scope: &Scope, client: &StreamingClient) -> Result<()> {
    let (people, batches) = workload();
    let legacy_people: Vec<PersonId> = (0..LEGACY_PEOPLE).map(|_| PersonId::new()).collect();
    let started = Instant::now();

    // 1. Streams and consumers.
    let summary_consumer = scope.consumer("person-projection-summary");
    let search_consumer = scope.consumer("person-projection-search");
    let config = client.config();
    let (stream_name, dlq_name, consumers) = (
        &config.stream.name,
        &config.dlq.name,
        config.consumers.len(),
    );
    if scope.is_namespaced() {
        println!(
            "streams {stream_name} and {dlq_name} and {consumers} consumers are in place: this run's own, under the subject prefix {}; deleted at the end",
            config.subject_prefix.as_deref().unwrap_or_default()
        );
    } else {
        println!("streams {stream_name} and {dlq_name} and {consumers} consumers are in place");
    }

    // 2. Publish.
    let publisher = client.publisher();
    let mut published = 0usize;
    for (person, events) in &batches {
        let receipt = publisher
            .append(*person, ExpectedVersion::NoEvents, events)
            .await
            .with_context(|| format!("appending the history of {person}"))?;
        published += receipt.events.len();
    }
    // A client that retries after a lost ack publishes the same events again: the
    // server keeps one copy.
    let again: Vec<StreamingEventEnvelope> =
        batches.iter().take(20).map(|(_, e)| e[0].clone()).collect();
    let duplicates = publisher
        .publish_all(again)
        .filter(|r| futures::future::ready(r.as_ref().is_ok_and(|r| r.duplicate)))
        .count()
        .await;
    let legacy = publish_legacy(client, &legacy_people).await?;
    let total = published + legacy;
    println!(
        "published {published} events in {} atomic appends, {legacy} legacy V1 events; {duplicates} re-published events rejected as duplicates",
        batches.len()
    );

    // 3. Two projections, each on its own durable consumer.
    let summary = Arc::new(Summary::new(&batches));
    let poison = batches[7].1[2].clone();
    let search = Arc::new(Search::new(poison.event_id));
    let options = SubscriptionOptions::default().concurrency(32);
    let mut summary_manager =
        SubscriptionManager::new(client.clone()).with_options(options.clone());
    summary_manager.register_handler(summary.clone());
    let summary_run = summary_manager.start_consumer(&summary_consumer).await?;
    let mut search_manager = SubscriptionManager::new(client.clone()).with_options(options);
    search_manager.register_handler(search.clone());
    let search_run = search_manager.start_consumer(&search_consumer).await?;

    let consuming = Instant::now();
    let deadline = consuming + Duration::from_secs(45);
    let mut status = StatusLine::new();
    let line = |s: &Stats, q: &Stats| {
        format!(
            "summary {:>5}/{total} handled, {:>3} retried | search {:>5} handled, {} dead-lettered ({} parked)",
            s.processed, s.retried, q.processed, q.dead_lettered, q.parked
        )
    };
    loop {
        let s = summary_run.stats();
        let q = search_run.stats();
        if s.processed as usize == total && (q.processed + q.dead_lettered) as usize == total {
            status.finish(line(&s, &q));
            break;
        }
        status.update(line(&s, &q));
        if Instant::now() > deadline {
            status.finish(line(&s, &q));
            bail!("projections did not catch up within 45 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let consume_time = consuming.elapsed();

    // 4. Dead letters: inspect, fix, replay in order.
    let dlq = client.dead_letters();
    let letters = dlq
        .list(&DeadLetterFilter {
            consumer: Some(search_consumer.clone()),
            ..Default::default()
        })
        .await?;
    println!("\ndead letters of {search_consumer}: {}", letters.len());
    for d in &letters {
        println!(
            "  #{:<4} {:<28} {}",
            d.dlq_sequence,
            d.letter.event_type.as_deref().unwrap_or("?"),
            d.letter.reason
        );
    }
    search.fixed.store(true, Ordering::SeqCst);
    for d in &letters {
        dlq.replay(d.dlq_sequence).await?;
    }
    let replayed = letters.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while search.applied_for(poison.aggregate_id).len() < batches[7].1.len() {
        if Instant::now() > deadline {
            bail!("replayed events were not applied within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let order = search.applied_for(poison.aggregate_id);
    println!(
        "after the fix and {replayed} replays, person {} has events {:?} applied, in order",
        poison.aggregate_id, order
    );
    let history = client.reader().load_aggregate(poison.aggregate_id).await?;
    if history.len() != batches[7].1.len() {
        bail!(
            "the person's history holds {} events after the replays, {} before",
            history.len(),
            batches[7].1.len()
        );
    }
    println!(
        "their history still holds {} events: replays went to the search consumer alone, outside it",
        history.len()
    );

    // Summary.
    let s = summary_run.stats();
    let q = search_run.stats();
    println!("\n== summary ==");
    println!(
        "published             {published} (+{legacy} legacy V1), duplicates rejected {duplicates}"
    );
    println!(
        "summary projection    handled {}, retried {}, dead-lettered {} (replays go to the search consumer alone)",
        s.processed, s.retried, s.dead_lettered
    );
    println!(
        "search projection     handled {}, retried {}, dead-lettered {} ({} parked), replayed {replayed}",
        q.processed, q.retried, q.dead_lettered, q.parked
    );
    println!("projection rows (summary):");
    for row in summary.rows(&people[..3]) {
        println!("  {row}");
    }
    if let Some(legacy_row) = summary.legacy_row() {
        println!("  {legacy_row}  <- upcast from V1");
    }
    let (p50, p99) = summary.latency_percentiles();
    println!(
        "throughput            {:.0} events/s per projection ({} events in {:.2?})",
        total as f64 / consume_time.as_secs_f64(),
        total,
        consume_time
    );
    println!(
        "publish-to-handled    p50 {p50:.2?}, p99 {p99:.2?} (the whole workload was published before the projections started)"
    );
    println!("total time            {:.2?}", started.elapsed());

    summary_run.shutdown(Duration::from_secs(5)).await;
    search_run.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// 100 people, 10 or 11 events each, with a causation chain per person.
fn workload() -> (Vec<PersonId>, Vec<(PersonId, Vec<StreamingEventEnvelope>)>) {
    let people: Vec<PersonId> = (0..PEOPLE).map(|_| PersonId::new()).collect();
    let mut batches = Vec::new();
    for (i, &person_id) in people.iter().enumerate() {
        let command_id = uuid::Uuid::now_v7();
        let name = PersonName::new(format!("Person{i}"), None, "Example").expect("valid name");
        let mut events: Vec<StreamingEventEnvelope> = Vec::new();
        let mut push = |make: &dyn Fn(EventMetadata) -> PersonEventV2| {
            let metadata = match events.last() {
                None => EventMetadata::from_command(command_id).with_actor("svc-onboarding"),
                Some(prev) => EventMetadata::caused_by(prev.metadata(), prev.event_id),
            };
            let seq = events.len() as u64 + 1;
            events.push(StreamingEventEnvelope::new(person_id, seq, make(metadata)));
        };
        push(&|metadata| PersonEventV2::Created {
            person_id,
            name: name.clone(),
            source: "api".into(),
            metadata,
        });
        push(&|metadata| PersonEventV2::NameUpdated {
            person_id,
            old_name: name.clone(),
            new_name: name.clone().with_preferred_name("P").expect("valid"),
            change_reason: Some("preferred name".into()),
            metadata,
        });
        push(&|metadata| PersonEventV2::BirthDateSet {
            person_id,
            birth_date: chrono::NaiveDate::from_ymd_opt(
                1980 + (i % 30) as i32,
                1 + (i % 12) as u32,
                1,
            )
            .expect("date"),
            metadata,
        });
        push(&|metadata| PersonEventV2::ComponentAdded {
            person_id,
            component_type: ComponentType::EmailAddress,
            component_data: serde_json::json!({ "address": format!("person{i}@example.com") }),
            metadata,
        });
        push(&|metadata| PersonEventV2::ComponentAdded {
            person_id,
            component_type: ComponentType::PhoneNumber,
            component_data: serde_json::json!({ "number": format!("+1-555-{i:04}") }),
            metadata,
        });
        push(&|metadata| PersonEventV2::LocationAssigned {
            person_id,
            location_id: uuid::Uuid::now_v7(),
            location_type: "home".into(),
            metadata,
        });
        push(&|metadata| PersonEventV2::EmploymentAdded {
            person_id,
            organization_id: uuid::Uuid::now_v7(),
            role: "engineer".into(),
            metadata,
        });
        push(&|metadata| PersonEventV2::Suspended {
            person_id,
            reason: "policy review".into(),
            metadata,
        });
        push(&|metadata| PersonEventV2::Activated {
            person_id,
            reason: "review passed".into(),
            metadata,
        });
        push(&|metadata| PersonEventV2::IdentityLinked {
            person_id,
            identity_id: uuid::Uuid::now_v7(),
            identity_type: "sso".into(),
            metadata,
        });
        if i % 20 == 19 {
            let target = people[i - 1];
            push(&|metadata| PersonEventV2::PersonMerged {
                source_person_id: person_id,
                target_person_id: target,
                merge_reason: MergeReason::DuplicateIdentity,
                metadata,
            });
        }
        batches.push((person_id, events));
    }
    (people, batches)
}

/// 5 V1 events for each of `people`, published raw the way the week-1 system stored them.
async fn publish_legacy(client: &StreamingClient, people: &[PersonId]) -> Result<usize> {
    let mut count = 0;
    let subjects = client.config().subjects();
    for (i, &id) in people.iter().enumerate() {
        let p = format!(r#"{{"id": "{id}"}}"#);
        let events = [
            (
                "created",
                format!(
                    r#"{{"PersonCreated": {{"person_id": {p}, "name": {{"given_name": "Legacy{i}", "family_name": "Person", "middle_names": [], "preferred_name": null, "honorific": null, "suffix": null}}, "source": "hr-import", "created_at": "2025-07-01T09:00:00Z"}}}}"#
                ),
            ),
            (
                "birth_date_set",
                format!(
                    r#"{{"BirthDateSet": {{"person_id": {p}, "birth_date": "1970-01-0{}", "set_at": "2025-07-01T09:00:01Z"}}}}"#,
                    1 + i % 9
                ),
            ),
            (
                "component_added",
                format!(
                    r#"{{"ComponentRegistered": {{"person_id": {p}, "component_type": "EmailAddress", "registered_at": "2025-07-01T09:00:02Z"}}}}"#
                ),
            ),
            (
                "suspended",
                format!(
                    r#"{{"PersonDeactivated": {{"person_id": {p}, "reason": "left", "deactivated_at": "2025-07-20T17:00:00+02:00"}}}}"#
                ),
            ),
            (
                "activated",
                format!(
                    r#"{{"PersonReactivated": {{"person_id": {p}, "reason": "rehired", "reactivated_at": "2025-08-01T09:00:00Z"}}}}"#
                ),
            ),
        ];
        for (ty, body) in events {
            client
                .jetstream()
                .publish(subjects.event_subject(&id, ty), body.into())
                .await?
                .await?;
            count += 1;
        }
    }
    Ok(count)
}

#[derive(Debug, Clone, Default)]
struct Row {
    name: String,
    status: &'static str,
    events: u64,
    email: Option<String>,
    legacy: bool,
}

/// The summary projection: one row per person. Idempotent on the event id; about 3% of
/// events fail once with a transient error and are retried by the broker.
struct Summary {
    rows: Mutex<HashMap<PersonId, Row>>,
    applied: Mutex<HashSet<EventId>>,
    flaky: HashSet<EventId>,
    tried: Mutex<HashSet<EventId>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Summary {
    fn new(batches: &[(PersonId, Vec<StreamingEventEnvelope>)]) -> Self {
        let flaky = batches
            .iter()
            .flat_map(|(_, e)| e.iter())
            .enumerate()
            .filter(|(i, _)| i % 33 == 5)
            .map(|(_, e)| e.event_id)
            .collect();
        Self {
            rows: Mutex::default(),
            applied: Mutex::default(),
            flaky,
            tried: Mutex::default(),
            latencies: Mutex::default(),
        }
    }

    fn rows(&self, people: &[PersonId]) -> Vec<String> {
        let rows = self.rows.lock().expect("rows");
        people
            .iter()
            .filter_map(|p| {
                rows.get(p).map(|r| {
                    format!(
                        "{p}  {:<22} {:<9} {:>2} events  {}",
                        r.name,
                        r.status,
                        r.events,
                        r.email.as_deref().unwrap_or("-")
                    )
                })
            })
            .collect()
    }

    fn legacy_row(&self) -> Option<String> {
        let rows = self.rows.lock().expect("rows");
        rows.iter()
            .find(|(_, r)| r.legacy)
            .map(|(p, r)| format!("{p}  {:<22} {:<9} {:>2} events", r.name, r.status, r.events))
    }

    fn latency_percentiles(&self) -> (Duration, Duration) {
        let mut l = self.latencies.lock().expect("latencies").clone();
        l.sort();
        if l.is_empty() {
            return (Duration::ZERO, Duration::ZERO);
        }
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
        (at(0.50), at(0.99))
    }
}

#[async_trait]
impl StreamingEventHandler for Summary {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if self
            .applied
            .lock()
            .expect("applied")
            .contains(&envelope.event_id)
        {
            return Ok(()); // already applied: redelivery is harmless
        }
        if self.flaky.contains(&envelope.event_id)
            && self.tried.lock().expect("tried").insert(envelope.event_id)
        {
            return Err(HandlerError::transient("summary store timed out"));
        }
        let legacy = envelope.metadata().context.contains_key(UPCAST_CONTEXT_KEY);
        if !legacy {
            let age = chrono::Utc::now() - envelope.metadata().timestamp;
            if let Ok(age) = age.to_std() {
                self.latencies.lock().expect("latencies").push(age);
            }
        }
        let mut rows = self.rows.lock().expect("rows");
        let row = rows.entry(envelope.aggregate_id).or_default();
        row.events += 1;
        row.legacy |= legacy;
        match &envelope.event {
            PersonEventV2::Created { name, .. } => {
                row.name = name.display_name();
                row.status = "active";
            }
            PersonEventV2::NameUpdated { new_name, .. } => row.name = new_name.display_name(),
            PersonEventV2::Suspended { .. } => row.status = "suspended",
            PersonEventV2::Activated { .. } => row.status = "active",
            PersonEventV2::PersonMerged { .. } => row.status = "merged",
            PersonEventV2::ComponentAdded {
                component_type: ComponentType::EmailAddress,
                component_data,
                ..
            } => {
                row.email = component_data
                    .get("address")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned);
            }
            _ => {}
        }
        self.applied
            .lock()
            .expect("applied")
            .insert(envelope.event_id);
        Ok(())
    }

    fn name(&self) -> &str {
        "summary"
    }
}

/// The search index: name tokens per person. One poison event fails permanently until
/// the handler is "fixed".
struct Search {
    index: Mutex<BTreeMap<String, HashSet<PersonId>>>,
    applied: Mutex<HashMap<PersonId, Vec<u64>>>,
    poison: EventId,
    fixed: AtomicBool,
}

impl Search {
    fn new(poison: EventId) -> Self {
        Self {
            index: Mutex::default(),
            applied: Mutex::default(),
            poison,
            fixed: AtomicBool::new(false),
        }
    }

    fn applied_for(&self, person: PersonId) -> Vec<u64> {
        self.applied
            .lock()
            .expect("applied")
            .get(&person)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl StreamingEventHandler for Search {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if envelope.event_id == self.poison && !self.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent(
                "birth date outside the index's supported range",
            ));
        }
        if let PersonEventV2::Created { name, .. }
        | PersonEventV2::NameUpdated { new_name: name, .. } = &envelope.event
        {
            let mut index = self.index.lock().expect("index");
            for token in name.display_name().split_whitespace() {
                index
                    .entry(token.to_lowercase())
                    .or_default()
                    .insert(envelope.aggregate_id);
            }
        }
        self.applied
            .lock()
            .expect("applied")
            .entry(envelope.aggregate_id)
            .or_default()
            .push(envelope.sequence);
        Ok(())
    }

    fn name(&self) -> &str {
        "search"
    }
}
