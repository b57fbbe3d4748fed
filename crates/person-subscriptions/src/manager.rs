//! [`SubscriptionManager`] and the [`SubscriptionHandle`] of a running consumer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use person_retry::{BreakerState, DeadLetterSink};
use person_streaming::{ConsumerSettings, DeadLetterQueue, StreamingClient};
use tokio::task::JoinHandle;

use crate::group::GroupHandle;
use crate::handler::StreamingEventHandler;
use crate::options::SubscriptionOptions;
use crate::stats::{Counters, Stats};
use crate::worker::Worker;

/// Why a consumer could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionErrorKind {
    /// No consumer of that name in the [`person_streaming::StreamingConfig`].
    UnknownConsumer,
    /// No handler is registered.
    NoHandlers,
    /// A handler name is not a subject-safe token, or two handlers share a name.
    InvalidHandlerName,
    /// The consumer is split into partitions: start it with
    /// [`SubscriptionManager::start_group`].
    Partitioned,
    /// The consumer group could not be joined (its bucket could not be opened or
    /// created, or its partitions are misconfigured).
    GroupUnavailable,
    /// The running consumer was deleted on the server; it stopped rather than recreate
    /// itself and deliver its history again (see
    /// [`SubscriptionOptions::recreate_deleted_consumer`]).
    ConsumerDeleted,
}

/// A consumer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SubscriptionError {
    kind: SubscriptionErrorKind,
    message: String,
}

impl SubscriptionError {
    pub(crate) fn consumer_deleted(consumer: &str) -> Self {
        Self {
            kind: SubscriptionErrorKind::ConsumerDeleted,
            message: format!(
                "consumer `{consumer}` was deleted on the server; it stopped (recreate it with `person-stream setup` or `StreamingClient::ensure`, then start it again, or opt in to recreation with SubscriptionOptions::recreate_deleted_consumer)"
            ),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> SubscriptionErrorKind {
        self.kind
    }
}

/// Runs handlers on durable consumers.
///
/// Each handler gets its own durable consumer, so one handler's failure is never hidden
/// by another's success, and each has its own progress, retries, breaker and dead
/// letters. With one handler registered, the consumer is the configured durable itself;
/// with several, each handler runs on `<durable>-<handler name>`, created from the same
/// settings.
///
/// ```no_run
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use person_events::StreamingEventEnvelope;
/// use person_streaming::{StreamingClient, StreamingConfig};
/// use person_subscriptions::{DomainResult, StreamingEventHandler, SubscriptionManager};
///
/// struct Summary;
/// #[async_trait]
/// impl StreamingEventHandler for Summary {
///     async fn handle_event(&self, _envelope: StreamingEventEnvelope) -> DomainResult<()> { Ok(()) }
///     fn name(&self) -> &str { "summary" }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
/// let mut manager = SubscriptionManager::new(client);
/// manager.register_handler(Arc::new(Summary));
/// let handle = manager.start_consumer("person-projection-summary").await?;
/// // ... later
/// println!("{:?}", handle.stats());
/// handle.shutdown(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
pub struct SubscriptionManager {
    client: StreamingClient,
    handlers: Vec<Arc<dyn StreamingEventHandler>>,
    options: SubscriptionOptions,
    sink: Option<Arc<dyn DeadLetterSink>>,
}

impl fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field(
                "handlers",
                &self
                    .handlers
                    .iter()
                    .map(|h| h.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SubscriptionManager {
    /// A manager on `client`'s streams, with default options and the client's DLQ.
    pub fn new(client: StreamingClient) -> Self {
        Self {
            client,
            handlers: Vec::new(),
            options: SubscriptionOptions::default(),
            sink: None,
        }
    }

    /// Replaces the runtime options.
    pub fn with_options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// Stores dead letters somewhere other than the client's DLQ stream.
    pub fn with_dead_letter_sink(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Adds a handler; it runs on every consumer started afterwards.
    pub fn register_handler(&mut self, handler: Arc<dyn StreamingEventHandler>) -> &mut Self {
        self.handlers.push(handler);
        self
    }

    /// Starts the handlers on the named consumer from the configuration, in this
    /// process alone. A consumer split into partitions is started with
    /// [`start_group`](Self::start_group) instead.
    pub async fn start_consumer(
        &self,
        consumer: &str,
    ) -> Result<SubscriptionHandle, SubscriptionError> {
        let prepared = self.prepare(consumer)?;
        if prepared.settings.partitions > 1 {
            return Err(SubscriptionError {
                kind: SubscriptionErrorKind::Partitioned,
                message: format!(
                    "consumer `{consumer}` has {} partitions: start it with SubscriptionManager::start_group, which runs each partition in one instance of the group",
                    prepared.settings.partitions
                ),
            });
        }
        let mut workers = Vec::new();
        for (handler, s) in self.handlers.iter().zip(prepared.per_handler) {
            let worker = Worker::new(
                self.client.clone(),
                self.client.jetstream().clone(),
                self.client.config().stream.name.clone(),
                s.clone(),
                handler.clone(),
                self.worker_options(&s),
                prepared.sink.clone(),
                prepared.dlq.clone(),
                Arc::new(Counters::default()),
            );
            let task = tokio::spawn(worker.clone().run());
            workers.push((worker, task));
        }
        Ok(SubscriptionHandle { workers })
    }

    /// Joins the consumer group of the named consumer: every process that calls this
    /// for the same consumer shares its partitions (`partitions` in the consumer's
    /// configuration), each partition handled by one instance at a time, in stream
    /// order per person. Partitions spread evenly over the live instances and move
    /// when one joins, leaves (see [`GroupHandle::shutdown`]) or dies (after
    /// [`SubscriptionOptions::group_lease`]). A consumer with one partition runs in
    /// one instance, the others standing by.
    ///
    /// [`SubscriptionOptions::concurrency`] is the instance's budget of calls per
    /// handler, shared by every partition it handles: three instances run three times
    /// the calls of one. `max_in_hand` bounds each partition's consumer.
    ///
    /// Membership and leases live in the KV bucket
    /// [`StreamingConfig::groups_bucket`](person_streaming::StreamingConfig::groups_bucket),
    /// created here when `setup` has not.
    pub async fn start_group(&self, consumer: &str) -> Result<GroupHandle, SubscriptionError> {
        let prepared = self.prepare(consumer)?;
        let slots = crate::group::slots_of(&self.client, &prepared.settings, &prepared.per_handler)
            .map_err(|e| SubscriptionError {
                kind: SubscriptionErrorKind::GroupUnavailable,
                message: e.to_string(),
            })?;
        let bucket = crate::group::bucket(&self.client)
            .await
            .map_err(|message| SubscriptionError {
                kind: SubscriptionErrorKind::GroupUnavailable,
                message,
            })?;
        let mut options = self.options.clone();
        options.max_in_hand = options.max_in_hand.max(1);
        let permits = self
            .handlers
            .iter()
            .map(|_| Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1))))
            .collect();
        Ok(crate::group::spawn(crate::group::GroupSpec {
            client: self.client.clone(),
            group: prepared.settings.durable_name.clone(),
            handlers: self.handlers.clone(),
            options,
            permits,
            sink: prepared.sink,
            dlq: prepared.dlq,
            slots,
            bucket,
        }))
    }

    fn worker_options(&self, s: &ConsumerSettings) -> SubscriptionOptions {
        let mut options = self.options.clone();
        options.max_in_hand = options
            .max_in_hand
            .min(usize::try_from(s.max_ack_pending).unwrap_or(usize::MAX))
            .max(1);
        options
    }

    /// Checks the consumer and the handlers; the settings of each handler's consumer.
    fn prepare(&self, consumer: &str) -> Result<Prepared, SubscriptionError> {
        let settings = self
            .client
            .config()
            .consumer(consumer)
            .cloned()
            .ok_or_else(|| SubscriptionError {
                kind: SubscriptionErrorKind::UnknownConsumer,
                message: format!(
                    "no consumer `{consumer}` in the streaming configuration (known: {})",
                    self.client
                        .config()
                        .consumers
                        .iter()
                        .map(|c| c.durable_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if self.handlers.is_empty() {
            return Err(SubscriptionError {
                kind: SubscriptionErrorKind::NoHandlers,
                message: "register a handler before starting a consumer".into(),
            });
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &self.handlers {
            person_events::subject::validate_token("handler name", h.name()).map_err(|e| {
                SubscriptionError {
                    kind: SubscriptionErrorKind::InvalidHandlerName,
                    message: e.to_string(),
                }
            })?;
            if !names.insert(h.name().to_owned()) {
                return Err(SubscriptionError {
                    kind: SubscriptionErrorKind::InvalidHandlerName,
                    message: format!(
                        "two handlers are named `{}`: names must be unique",
                        h.name()
                    ),
                });
            }
        }
        // Parking is read back from the DLQ stream when that is where letters go.
        let (sink, dlq): (Arc<dyn DeadLetterSink>, _) = match &self.sink {
            Some(s) => (s.clone(), None),
            None => (
                Arc::new(self.client.dead_letters()),
                Some(self.client.dead_letters()),
            ),
        };
        let single = self.handlers.len() == 1;
        let per_handler = self
            .handlers
            .iter()
            .map(|handler| {
                let mut s = settings.clone();
                if !single {
                    s.durable_name = format!("{}-{}", settings.durable_name, handler.name());
                }
                s
            })
            .collect();
        Ok(Prepared {
            settings,
            per_handler,
            sink,
            dlq,
        })
    }
}

/// What starting a consumer needs, checked.
struct Prepared {
    settings: ConsumerSettings,
    per_handler: Vec<ConsumerSettings>,
    sink: Arc<dyn DeadLetterSink>,
    dlq: Option<DeadLetterQueue>,
}

/// A running consumer: its stats, and its shutdown.
pub struct SubscriptionHandle {
    workers: Vec<(Arc<Worker>, JoinHandle<()>)>,
}

impl fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("consumers", &self.consumer_names())
            .finish()
    }
}

impl SubscriptionHandle {
    /// The durable consumer names in use, one per handler.
    pub fn consumer_names(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|(w, _)| w.settings.durable_name.clone())
            .collect()
    }

    /// Counters summed over every handler.
    pub fn stats(&self) -> Stats {
        self.handler_stats()
            .into_iter()
            .fold(Stats::default(), |a, (_, s)| a.plus(s))
    }

    /// Counters per handler name.
    pub fn handler_stats(&self) -> Vec<(String, Stats)> {
        self.workers
            .iter()
            .map(|(w, _)| (w.handler.name().to_owned(), w.counters.snapshot()))
            .collect()
    }

    /// The consumers that stopped on their own, by handler name, with why (today: their
    /// durable consumer was deleted). Empty while everything runs.
    pub fn errors(&self) -> Vec<(String, SubscriptionError)> {
        self.workers
            .iter()
            .filter_map(|(w, _)| w.failure().map(|e| (w.handler.name().to_owned(), e)))
            .collect()
    }

    /// The circuit breaker state of each handler.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        self.workers
            .iter()
            .map(|(w, _)| (w.handler.name().to_owned(), w.breaker_state()))
            .collect()
    }

    /// Stops pulling, waits for the outstanding pull to end (at most the fetch
    /// expiry), lets running handlers finish within `timeout`, acks what succeeded and
    /// NAKs the rest, each person's messages no sooner than the redelivery they wait
    /// for, so the next start resumes where this one stopped, in order.
    pub async fn shutdown(self, timeout: Duration) {
        for (worker, _) in &self.workers {
            worker.request_stop(timeout);
        }
        for (worker, task) in self.workers {
            let limit = timeout + worker.options.fetch_expiry + Duration::from_secs(5);
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(
                    consumer = %worker.settings.durable_name,
                    "shutdown did not finish in time; unsettled messages come back after the ack wait"
                );
            }
        }
    }
}
