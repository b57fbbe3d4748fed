//! The publisher's metrics through the `metrics` facade. No recorder is installed here:
//! without one the handles are no-ops. They are built when the `Publisher` is created and
//! bound to the recorder installed then. Names and labels are listed in the README
//! ("Metrics").

use std::time::Duration;

use metrics::{Counter, Histogram, Unit};

use crate::publisher::{AppendReceipt, PublishError, PublishErrorKind, PublishReceipt};

/// Events the server acknowledged (duplicates included).
pub(crate) const PUBLISHED: &str = "person_events_published_total";
/// Of those, answered as duplicates (already stored inside the duplicate window).
pub(crate) const DUPLICATES: &str = "person_events_publish_duplicates_total";
/// Publishes and appends that returned an error, by kind.
pub(crate) const PUBLISH_FAILED: &str = "person_events_publish_failed_total";
/// From the first send to the server's ack.
pub(crate) const PUBLISH_DURATION: &str = "person_events_publish_duration_seconds";

/// The handles of one operation (`publish`, which covers `publish_all`, or `append`).
#[derive(Debug)]
struct Operation {
    published: Counter,
    duplicates: Counter,
    duration: Histogram,
}

impl Operation {
    fn new(stream: &str, operation: &'static str) -> Self {
        let labels = [
            ("stream", stream.to_owned()),
            ("operation", operation.to_owned()),
        ];
        Self {
            published: metrics::counter!(PUBLISHED, &labels),
            duplicates: metrics::counter!(DUPLICATES, &labels),
            duration: metrics::histogram!(PUBLISH_DURATION, &labels),
        }
    }
}

/// A publisher's metric handles.
#[derive(Debug)]
pub(crate) struct PublishMetrics {
    stream: String,
    publish: Operation,
    append: Operation,
}

impl PublishMetrics {
    pub(crate) fn new(stream: &str) -> Self {
        metrics::describe_counter!(
            PUBLISHED,
            "Events the server acknowledged (duplicates included)."
        );
        metrics::describe_counter!(
            DUPLICATES,
            "Publishes the server answered as duplicates (already stored)."
        );
        metrics::describe_histogram!(
            PUBLISH_DURATION,
            Unit::Seconds,
            "From sending a publish or append to the server's ack (retries included)."
        );
        metrics::describe_counter!(
            PUBLISH_FAILED,
            "Publishes and appends that failed, after retries, by error kind."
        );
        Self {
            stream: stream.to_owned(),
            publish: Operation::new(stream, "publish"),
            append: Operation::new(stream, "append"),
        }
    }

    /// One event published and acked after `took`.
    pub(crate) fn published(&self, receipt: &PublishReceipt, took: Duration) {
        let op = &self.publish;
        op.published.increment(1);
        if receipt.duplicate {
            op.duplicates.increment(1);
        }
        op.duration.record(took);
    }

    /// One append acked after `took`.
    pub(crate) fn appended(&self, receipt: &AppendReceipt, took: Duration) {
        let op = &self.append;
        op.published.increment(receipt.events.len() as u64);
        let duplicates = receipt.events.iter().filter(|e| e.duplicate).count();
        if duplicates > 0 {
            op.duplicates.increment(duplicates as u64);
        }
        op.duration.record(took);
    }

    /// One publish (`append == false`) or append returned `error`, after its retries.
    /// Failures are rare, so the handle is looked up per failure.
    pub(crate) fn failed(&self, append: bool, error: &PublishError) {
        let labels = [
            ("stream", self.stream.clone()),
            (
                "operation",
                if append { "append" } else { "publish" }.to_owned(),
            ),
            ("kind", kind_label(error.kind()).to_owned()),
        ];
        metrics::counter!(PUBLISH_FAILED, &labels).increment(1);
    }
}

/// The `kind` label of a failure: the error kind in snake case.
fn kind_label(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::InvalidEvent => "invalid_event",
        PublishErrorKind::PayloadTooLarge => "payload_too_large",
        PublishErrorKind::NoStream => "no_stream",
        PublishErrorKind::Unavailable => "unavailable",
        PublishErrorKind::Conflict => "conflict",
        PublishErrorKind::TimedOut => "timed_out",
        PublishErrorKind::Transport => "transport",
        PublishErrorKind::Rejected => "rejected",
        PublishErrorKind::PermissionDenied => "permission_denied",
    }
}
