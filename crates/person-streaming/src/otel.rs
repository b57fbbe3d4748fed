//! OpenTelemetry context propagation on publish (feature `opentelemetry`).
//!
//! An event whose metadata carries no trace context gets the current span's, in the
//! W3C format, in its body and therefore in its `traceparent` / `tracestate` headers:
//! the body stays the source of truth and the headers mirror it.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use person_events::StreamingEventEnvelope;
use person_metadata::EventMetadata;
use person_metadata::headers::{TRACEPARENT, TRACESTATE};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `envelope` with the current span's trace context, when its metadata has none and
/// there is a valid current context; `None` (nothing copied) otherwise.
pub(crate) fn with_current_trace(
    envelope: &StreamingEventEnvelope,
) -> Option<StreamingEventEnvelope> {
    if envelope.metadata().traceparent.is_some() {
        return None;
    }
    // No span, or no subscriber interested in it: nothing to look up.
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    // Without the OpenTelemetry layer this is an empty context.
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut traced = envelope.clone();
    TraceContextPropagator::new()
        .inject_context(&cx, &mut MetadataInjector(traced.event.metadata_mut()));
    Some(traced)
}

/// Writes the propagator's fields into the metadata's trace context.
struct MetadataInjector<'a>(&'a mut EventMetadata);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = Some(value),
            // The propagator writes an empty `tracestate` when there is none.
            TRACESTATE if !value.is_empty() => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}
