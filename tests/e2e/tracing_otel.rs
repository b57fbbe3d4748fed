//! OpenTelemetry (feature `opentelemetry`): an event published inside a span carries that
//! span's W3C context, and the handler's `person_event` span continues the trace as its
//! child. Metadata that already has a trace context is kept as it is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nats_harness::NatsServer;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use person_events::{EventId, PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_subscriptions::{DomainResult, StreamingEventHandler, SubscriptionManager};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{CONSUMER, config, connect, event, eventually};

/// A caller's own trace context, which the publisher must not replace.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Records every envelope it is given.
#[derive(Default)]
struct Recorder(Mutex<Vec<StreamingEventEnvelope>>);

#[async_trait]
impl StreamingEventHandler for Recorder {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        self.0.lock().unwrap().push(envelope);
        Ok(())
    }

    fn name(&self) -> &str {
        "otel-recorder"
    }
}

/// The handler span of the event `id` (its `event_id` attribute).
fn handler_span(spans: &[SpanData], id: EventId) -> &SpanData {
    let id = id.to_string();
    spans
        .iter()
        .find(|s| {
            s.name == "person_event"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "event_id" && kv.value.as_str() == id.as_str())
        })
        .unwrap_or_else(|| panic!("no person_event span for {id} among {} spans", spans.len()))
}

// One thread: the thread-local subscriber below sees the runtime's spans, and no other
// test's.
#[tokio::test(flavor = "current_thread")]
async fn the_handler_span_continues_the_producers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("person-e2e")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), config(30)).await;
    let person = PersonId::new();
    let injected = event(person, 1);
    assert!(injected.metadata().traceparent.is_none());
    let caller = StreamingEventEnvelope::new(
        person,
        2,
        PersonEventV2::Activated {
            person_id: person,
            reason: "own trace".into(),
            metadata: EventMetadata::new().with_trace(
                format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
                Some("vendor=kept".into()),
            ),
        },
    );

    let producer = tracing::info_span!("produce");
    let producer_cx = producer.context().span().span_context().clone();
    assert!(
        producer_cx.is_valid(),
        "the layer gives the producer a context"
    );
    let publisher = client.publisher();
    async {
        publisher.publish(&injected).await.unwrap();
        publisher.publish(&caller).await.unwrap();
    }
    .instrument(producer.clone())
    .await;
    drop(producer);

    let handler = Arc::new(Recorder::default());
    let mut manager = SubscriptionManager::new(client.clone());
    manager.register_handler(handler.clone());
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually(60, "both events handled", || {
        handler.0.lock().unwrap().len() == 2
    })
    .await;
    handle.shutdown(Duration::from_secs(10)).await;
    provider.force_flush().unwrap();

    // The body carries the injected context (the headers mirror the body).
    let seen = handler.0.lock().unwrap().clone();
    let expected = format!("00-{}-{}-01", producer_cx.trace_id(), producer_cx.span_id());
    assert_eq!(
        seen[0].metadata().traceparent.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(seen[0].metadata().tracestate, None);
    assert_eq!(
        seen[1].metadata(),
        caller.metadata(),
        "the caller's context is kept"
    );

    let spans = exporter.get_finished_spans().unwrap();
    let first = handler_span(&spans, injected.event_id);
    assert_eq!(first.span_context.trace_id(), producer_cx.trace_id());
    assert_eq!(first.parent_span_id, producer_cx.span_id());
    assert!(first.parent_span_is_remote);
    let second = handler_span(&spans, caller.event_id);
    assert_eq!(
        second.span_context.trace_id(),
        TraceId::from_hex(CALLER_TRACE).unwrap()
    );
    assert_eq!(
        second.parent_span_id,
        SpanId::from_hex(CALLER_SPAN).unwrap()
    );
    assert_eq!(
        second.span_context.trace_state().get("vendor"),
        Some("kept")
    );
}
