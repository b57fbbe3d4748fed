//! `status` on a consumer group: each partition's owner, lag and pause state, read from
//! the groups bucket and the partitions' consumers while two members run; and what a
//! dead-letter filter on the group's name says.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nats_harness::NatsServer;
use person_streaming::{StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, StreamingEventEnvelope, StreamingEventHandler, SubscriptionManager,
    SubscriptionOptions,
};

use crate::support::{cli, eventually};

const GROUP: &str = "person-projection-summary";

struct Nothing;

#[async_trait]
impl StreamingEventHandler for Nothing {
    async fn handle_event(&self, _envelope: StreamingEventEnvelope) -> DomainResult<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        "nothing"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_who_owns_each_partition_and_which_are_paused() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let config = StreamingConfig::default()
        .with_partitions(GROUP, 3)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("person-streaming.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut members = Vec::new();
    for _ in 0..2 {
        let client = StreamingClient::new(&url, config.clone()).await.unwrap();
        let mut manager = SubscriptionManager::new(client)
            .with_options(SubscriptionOptions::default().group_lease(Duration::from_secs(2)));
        manager.register_handler(Arc::new(Nothing));
        members.push(manager.start_group(GROUP).await.unwrap());
    }
    // Three partitions over two members; the durable of what came before goes with
    // partition 0.
    eventually("every partition runs", async || {
        let mut all: Vec<u32> = members.iter().flat_map(|m| m.partitions()).collect();
        all.sort_unstable();
        all == [0, 1, 2] && members.iter().all(|m| !m.partitions().is_empty())
    })
    .await;
    let status = eventually_owned(&url, &path).await;
    let group = &status["groups"][0];
    assert_eq!(group["group"], GROUP);
    assert_eq!(group["partitions"], 3);
    assert_eq!(group["members"].as_array().unwrap().len(), 2, "{group}");
    let slots = group["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4, "{group}");
    for m in &members {
        for p in m.partitions() {
            let slot = &slots[p as usize];
            assert_eq!(slot["partition"], p);
            assert_eq!(slot["consumer"], format!("{GROUP}-p{p}"));
            assert_eq!(slot["owner"], m.instance(), "{slot}");
            assert_eq!(slot["paused"], false);
        }
    }
    assert!(slots[3]["partition"].is_null());
    assert_eq!(slots[3]["consumer"], GROUP);
    assert_eq!(slots[3]["owner"], slots[0]["owner"], "with partition 0");

    // The group's name in a dead-letter filter says where its letters are.
    let list = cli(
        &url,
        &["--config", &path, "dlq", "list", "--consumer", GROUP],
    )
    .await;
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stderr
            .contains(&format!("{GROUP} is a consumer group of 3 partitions"))
            && list.stderr.contains(&format!("{GROUP}-p0 to {GROUP}-p2")),
        "{list:?}"
    );

    let paused = cli(
        &url,
        &[
            "--config",
            &path,
            "consumer",
            "pause",
            &format!("{GROUP}-p1"),
        ],
    )
    .await;
    assert_eq!(paused.code, 0, "{paused:?}");
    let status = cli(&url, &["--config", &path, "status", "--json"])
        .await
        .json();
    assert_eq!(status["groups"][0]["slots"][1]["paused"], true);
    let table = cli(&url, &["--config", &path, "status"]).await;
    assert!(
        table
            .stdout
            .contains(&format!("group {GROUP} (3 partitions, 2 member(s)")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("before partitions"),
        "{}",
        table.stdout
    );
    for m in members {
        m.shutdown(Duration::from_secs(5)).await;
    }
}

/// `status --json` once every slot has an owner.
async fn eventually_owned(url: &str, path: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = cli(url, &["--config", path, "status", "--json"])
            .await
            .json();
        let owned = status["groups"][0]["slots"]
            .as_array()
            .is_some_and(|s| s.len() == 4 && s.iter().all(|x| x["owner"].is_string()));
        if owned {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every slot owned: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
