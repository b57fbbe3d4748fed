//! OpenTelemetry: the handler's span continues the producer's trace (feature
//! `opentelemetry`).

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use person_metadata::EventMetadata;
use person_metadata::headers::{TRACEPARENT, TRACESTATE};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the remote span named by the event's `traceparent` the parent of `span`, which
/// must not have been entered yet. The body's trace context comes first (it is the
/// source of truth); the message headers are read when the body has none.
pub(crate) fn continue_trace(
    span: &tracing::Span,
    metadata: Option<&EventMetadata>,
    headers: Option<&HeaderMap>,
) {
    // No subscriber records the span: nothing to parse.
    if span.is_disabled() {
        return;
    }
    let carrier = match metadata.and_then(|m| m.traceparent.as_deref().map(|tp| (tp, m))) {
        Some((traceparent, m)) => TraceContext {
            traceparent,
            tracestate: m.tracestate.as_deref(),
        },
        None => {
            let Some(h) = headers else { return };
            let Some(traceparent) = h.get(TRACEPARENT) else {
                return;
            };
            TraceContext {
                traceparent: traceparent.as_str(),
                tracestate: h.get(TRACESTATE).map(|v| v.as_str()),
            }
        }
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    // A malformed `traceparent` gives no remote span: the span stays a root.
    if cx.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, where there is no trace to join.
        let _ = span.set_parent(cx);
    }
}

/// A `traceparent` and optional `tracestate`, as the propagator reads them.
struct TraceContext<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for TraceContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec![TRACEPARENT];
        keys.extend(self.tracestate.map(|_| TRACESTATE));
        keys
    }
}
