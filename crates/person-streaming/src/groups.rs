//! The groups bucket's keys, and [`StreamingClient::group_status`]: who owns which
//! partition of a consumer group.
//!
//! The bucket ([`StreamingConfig::groups_bucket`](crate::StreamingConfig::groups_bucket))
//! holds, per group (the configured durable name):
//! - `<group>.m.<instance>`: the heartbeat of each member, its name as value;
//! - `<group>.l.<k>`: the lease of partition `k` (durable `<group>-p<k>`), the owning
//!   member's name as value. The owner of partition 0 also runs the durable itself,
//!   which keeps what was stored before partitions. A group of one partition has one
//!   lease, on the durable itself.

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::StreamingClient;
use crate::error::{StreamingError, StreamingErrorKind, js_error};
use crate::status::ConsumerStatus;

/// The key of `instance`'s heartbeat in `group`.
pub fn group_member_key(group: &str, instance: &str) -> String {
    format!("{group}.m.{instance}")
}

/// The key of partition `slot`'s lease in `group`.
pub fn group_lease_key(group: &str, slot: u32) -> String {
    format!("{group}.l.{slot}")
}

/// One slot of a group: a partition, or the pre-partition consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSlotStatus {
    /// The partition, or None for the durable that keeps what was stored before
    /// partitions.
    pub partition: Option<u32>,
    /// The member holding the slot's lease (for the pre-partition durable, partition
    /// 0's), if any.
    pub owner: Option<String>,
    /// The slot's durable consumer (pending is its lag).
    pub consumer: ConsumerStatus,
}

/// A consumer group as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group: the configured durable name.
    pub group: String,
    /// Its partitions.
    pub partitions: u32,
    /// Members with a heartbeat, and when it was last written. A member killed without
    /// leaving stays listed, with an old time, until the bucket's max age drops it.
    pub members: Vec<(String, DateTime<Utc>)>,
    /// Each slot, partitions first.
    pub slots: Vec<GroupSlotStatus>,
}

impl StreamingClient {
    /// The consumer group of the configured consumer `consumer`: its members, and each
    /// partition's owner, progress and pause state. Reads only; a missing bucket (no
    /// member ever ran) gives no members and no owners.
    ///
    /// Errors: [`StreamingErrorKind::InvalidInput`] for a consumer not in the
    /// configuration; [`StreamingErrorKind::NotFound`] when the event stream is missing.
    pub async fn group_status(&self, consumer: &str) -> Result<GroupStatus, StreamingError> {
        let Some(settings) = self.config().consumer(consumer) else {
            return Err(StreamingError::new(
                StreamingErrorKind::InvalidInput,
                format!("no consumer `{consumer}` in the configuration"),
            ));
        };
        let durables: Vec<(Option<u32>, String)> = if settings.partitions > 1 {
            let group = self.config().consumer_group(settings).map_err(|e| {
                StreamingError::new(StreamingErrorKind::InvalidInput, e.to_string())
            })?;
            (0..)
                .map(Some)
                .zip(group.partitions.into_iter().map(|c| c.durable_name))
                .chain([(None, group.legacy.durable_name)])
                .collect()
        } else {
            vec![(Some(0), settings.durable_name.clone())]
        };
        let (members, owners) = self.group_entries(consumer).await?;
        let mut slots = Vec::with_capacity(durables.len());
        for (partition, durable) in durables {
            // The pre-partition durable runs with partition 0.
            let lease = partition.unwrap_or(0);
            slots.push(GroupSlotStatus {
                partition,
                owner: owners
                    .iter()
                    .find(|(s, _)| *s == lease)
                    .map(|(_, o)| o.clone()),
                consumer: self.consumer_status(&durable).await?,
            });
        }
        Ok(GroupStatus {
            group: consumer.to_owned(),
            partitions: settings.partitions.max(1),
            members,
            slots,
        })
    }

    /// The heartbeats and lease owners of `group` in the groups bucket.
    #[allow(clippy::type_complexity)]
    async fn group_entries(
        &self,
        group: &str,
    ) -> Result<(Vec<(String, DateTime<Utc>)>, Vec<(u32, String)>), StreamingError> {
        let bucket = self.config().groups_bucket();
        let Ok(kv) = self.jetstream().get_key_value(&bucket).await else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut keys = kv
            .keys()
            .await
            .map_err(|e| js_error(format!("cannot list bucket {bucket}"), e))?;
        let prefix = format!("{group}.");
        let mut members = Vec::new();
        let mut owners = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| js_error(format!("cannot list bucket {bucket}"), e))?;
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(Some(entry)) = kv.entry(key.clone()).await else {
                continue;
            };
            let value = String::from_utf8_lossy(&entry.value).into_owned();
            if let Some(member) = rest.strip_prefix("m.") {
                let at = DateTime::from_timestamp(
                    entry.created.unix_timestamp(),
                    entry.created.nanosecond(),
                )
                .unwrap_or_default();
                members.push((member.to_owned(), at));
            } else if let Some(slot) = rest.strip_prefix("l.").and_then(|s| s.parse().ok()) {
                owners.push((slot, value));
            }
        }
        members.sort();
        Ok((members, owners))
    }
}
