//! [`EventMetadata`]: what every event says about where it came from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CausationId, CorrelationId, EventId};

/// The metadata schema version written by this crate. Week-1 data carries the same value.
pub const METADATA_VERSION: &str = "1.0";

/// Metadata carried by every event: version, correlation and causation, time, actor,
/// an extensible context map, and W3C trace context.
///
/// The JSON shape is the one the week-1 system stored (`version`, `correlation_id`,
/// `causation_id`, `timestamp`, `actor`, `context`); `traceparent` and `tracestate`
/// are added only when present, so old readers are unaffected.
///
/// ```
/// use person_metadata::EventMetadata;
///
/// let meta = EventMetadata::new()
///     .with_actor("svc-api")
///     .with_context("tenant", "acme");
/// assert_eq!(meta.causation_id, None);
/// assert_eq!(meta.context["tenant"], "acme");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Metadata schema version, [`METADATA_VERSION`] for metadata made here.
    #[serde(default = "default_version")]
    pub version: String,
    /// The conversation this event belongs to.
    pub correlation_id: CorrelationId,
    /// The command or event that directly caused this one; `None` for a root event.
    #[serde(default)]
    pub causation_id: Option<CausationId>,
    /// When the event happened (UTC). Written and read as chrono does, faster.
    #[serde(with = "crate::timestamp")]
    pub timestamp: DateTime<Utc>,
    /// Who or what caused the event (a user, a service), when known.
    #[serde(default)]
    pub actor: Option<String>,
    /// Free-form extra context. A `BTreeMap`, so its order (and so the encoded bytes)
    /// is deterministic.
    #[serde(default)]
    pub context: BTreeMap<String, serde_json::Value>,
    /// W3C `traceparent`, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate`, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn default_version() -> String {
    METADATA_VERSION.to_owned()
}

impl EventMetadata {
    /// Metadata for a root event: a fresh correlation id, no causation, the current time.
    pub fn new() -> Self {
        Self::with_correlation(CorrelationId::new())
    }

    /// Metadata for an event that belongs to an existing conversation.
    ///
    /// ```
    /// use person_metadata::{CorrelationId, EventMetadata};
    /// let conversation = CorrelationId::new();
    /// assert_eq!(EventMetadata::with_correlation(conversation).correlation_id, conversation);
    /// ```
    pub fn with_correlation(correlation_id: CorrelationId) -> Self {
        Self {
            version: default_version(),
            correlation_id,
            causation_id: None,
            timestamp: Utc::now(),
            actor: None,
            context: BTreeMap::new(),
            traceparent: None,
            tracestate: None,
        }
    }

    /// Metadata for an event emitted while handling a command: the command's id is
    /// both the causation id and the correlation id (the command starts the conversation).
    ///
    /// ```
    /// use person_metadata::EventMetadata;
    /// let command_id = uuid::Uuid::now_v7();
    /// let meta = EventMetadata::from_command(command_id);
    /// assert_eq!(meta.causation_id.unwrap().as_uuid(), &command_id);
    /// assert_eq!(meta.correlation_id.as_uuid(), &command_id);
    /// ```
    pub fn from_command(command_id: impl Into<Uuid>) -> Self {
        let command_id = command_id.into();
        let mut meta = Self::with_correlation(CorrelationId::from_uuid(command_id));
        meta.causation_id = Some(CausationId::from_uuid(command_id));
        meta
    }

    /// Metadata for an event caused by another event: keeps the parent's correlation
    /// id, actor and trace context, and takes the parent's event id as causation id.
    pub fn caused_by(parent: &EventMetadata, parent_event_id: EventId) -> Self {
        let mut meta = Self::with_correlation(parent.correlation_id);
        meta.causation_id = Some(parent_event_id.into());
        meta.actor.clone_from(&parent.actor);
        meta.traceparent.clone_from(&parent.traceparent);
        meta.tracestate.clone_from(&parent.tracestate);
        meta
    }

    /// Sets the causation id.
    pub fn with_causation(mut self, causation_id: impl Into<CausationId>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Adds one context entry.
    pub fn with_context(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// Sets W3C trace context (`traceparent`, and `tracestate` when there is one).
    pub fn with_trace(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Self {
        self.traceparent = Some(traceparent.into());
        self.tracestate = tracestate;
        self
    }
}

impl Default for EventMetadata {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_week1_shape() {
        let json = r#"{"version": "1.0", "correlation_id": "01890a5d-ac96-774b-bcce-b302099a8057",
            "causation_id": null, "timestamp": "2025-08-07T10:05:00Z", "actor": null, "context": {}}"#;
        let meta: EventMetadata = serde_json::from_str(json).unwrap();
        assert_eq!(meta.version, "1.0");
        assert_eq!(meta.causation_id, None);
        assert!(meta.traceparent.is_none());
        let back = serde_json::to_value(&meta).unwrap();
        assert!(
            back.get("traceparent").is_none(),
            "absent trace context is not written"
        );
    }

    #[test]
    fn causation_chain_keeps_correlation() {
        let root = EventMetadata::new().with_actor("alice").with_trace(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None,
        );
        let parent = EventId::new();
        let child = EventMetadata::caused_by(&root, parent);
        assert_eq!(child.correlation_id, root.correlation_id);
        assert_eq!(child.causation_id, Some(parent.into()));
        assert_eq!(child.actor.as_deref(), Some("alice"));
        assert_eq!(child.traceparent, root.traceparent);
    }

    #[test]
    fn context_order_is_deterministic() {
        let a = EventMetadata::new()
            .with_context("b", 1)
            .with_context("a", 2);
        let mut b = a.clone();
        b.context.clear();
        b = b.with_context("a", 2).with_context("b", 1);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}
