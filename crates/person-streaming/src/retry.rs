//! The week-1 `RetryHandler::new(client, jetstream, policy, dlq_subject)`: retries an
//! operation with a [`RetryPolicy`] and, when it finally fails, records the failure in
//! the dead-letter stream so it can be inspected.

use async_nats::jetstream;
use chrono::Utc;
use person_events::subject;
use person_retry::{DeadLetter, ErrorClass, RetryPolicy};

use crate::StreamingConfig;
use crate::dlq::{DeadLetterQueue, UNKNOWN_TOKEN};

/// The consumer token under which failed operations are recorded in the DLQ:
/// `person.dlq.retry-handler.unknown.<operation>`.
pub const RETRY_HANDLER_CONSUMER: &str = "retry-handler";

/// Retries an async operation and dead-letters its final failure.
///
/// The seed's snippet compiles as is:
///
/// ```no_run
/// use person_streaming::{RetryHandler, RetryPolicy, StreamingClient, StreamingConfig};
/// # async fn process_event() -> Result<(), std::io::Error> { Ok(()) }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let streaming = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
/// # let client = streaming.client().clone();
/// # let jetstream = streaming.jetstream().clone();
/// let retry_handler = RetryHandler::new(
///     client,
///     jetstream,
///     RetryPolicy::default(),
///     "person.dlq.>".to_string(),
/// );
///
/// // Execute with retry
/// let result = retry_handler.execute_with_retry(
///     || Box::pin(async { process_event().await }),
///     "process_event"
/// ).await;
/// # result?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryHandler {
    inner: std::sync::Arc<person_retry::RetryHandler>,
    dlq: DeadLetterQueue,
    dlq_stream_subject: String,
}

impl RetryHandler {
    /// A retry handler whose final failures go to the DLQ stream. `dlq_subject` is the
    /// DLQ stream's subject space (`person.dlq.>`); failures are stored under
    /// `person.dlq.retry-handler.unknown.<operation>`.
    ///
    /// The core client is accepted for the week-1 signature; everything goes through
    /// `jetstream`.
    pub fn new(
        _client: async_nats::Client,
        jetstream: jetstream::Context,
        policy: RetryPolicy,
        dlq_subject: String,
    ) -> Self {
        let config = StreamingConfig::default();
        Self {
            inner: std::sync::Arc::new(person_retry::RetryHandler::new(policy)),
            dlq: DeadLetterQueue::new(jetstream, &config),
            dlq_stream_subject: dlq_subject,
        }
    }

    /// The DLQ subject space given at construction.
    pub fn dlq_subject(&self) -> &str {
        &self.dlq_stream_subject
    }

    /// Runs `op` with the policy. On final failure the error is recorded in the DLQ
    /// (best effort: a DLQ failure is logged, the operation's error is returned either
    /// way) and returned unchanged.
    pub async fn execute_with_retry<F, Fut, T, E>(&self, op: F, context: &str) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let started = Utc::now();
        let result = self.inner.execute_with_retry(op, context).await;
        if let Err(e) = &result {
            let operation = if subject::validate_token("operation", context).is_ok() {
                context.to_owned()
            } else {
                UNKNOWN_TOKEN.to_owned()
            };
            let letter = DeadLetter {
                subject: format!("operation:{context}"),
                stream: String::new(),
                stream_sequence: 0,
                payload: bytes::Bytes::new(),
                headers: Vec::new(),
                reason: e.to_string(),
                error_class: ErrorClass::Transient,
                delivery_count: u64::from(self.inner.policy().max_attempts()),
                first_failure_at: started,
                last_failure_at: Utc::now(),
                consumer: RETRY_HANDLER_CONSUMER.to_owned(),
                handler: context.to_owned(),
                metadata: None,
                event_id: Some(uuid::Uuid::now_v7().to_string()),
                person_id: None,
                event_type: Some(operation),
                payload_truncated: false,
                original_size: None,
                headers_truncated: false,
                attempts: Vec::new(),
            };
            if let Err(dlq_error) = self.dlq.put_unique(&letter).await {
                tracing::warn!(context, error = %dlq_error, "could not record the failed operation in the DLQ");
            }
        }
        result
    }
}
