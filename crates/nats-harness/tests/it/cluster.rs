//! A 3-node cluster: an R3 stream keeps working while its leader is down.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use nats_harness::NatsCluster;

use crate::{connect_fast, eventually};

const TOTAL: u64 = 40;

#[tokio::test]
async fn r3_stream_survives_losing_its_leader() {
    let mut cluster = NatsCluster::start(3).await.expect("start cluster");
    assert_eq!(cluster.node_count(), 3);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.url().split(',').count(), 3);
    assert!(cluster.meta_leader().await.is_some());

    let js = jetstream::new(connect_fast(cluster.urls()).await);
    let config = stream::Config {
        name: "PEOPLE".into(),
        subjects: vec!["people.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    };
    let mut stream = js.create_stream(config).await.expect("create R3 stream");

    // Message ids make retried publishes idempotent (a retry after a lost ack is a duplicate).
    let publish = async |i: u64| {
        eventually(
            &format!("publish {i}"),
            Duration::from_secs(20),
            async || {
                js.send_publish(
                    "people.created",
                    PublishMessage::build()
                        .payload(format!("person {i}").into())
                        .message_id(format!("msg-{i}")),
                )
                .await?
                .await
            },
        )
        .await
    };
    for i in 0..TOTAL / 2 {
        publish(i).await;
    }

    let info = stream.info().await.expect("info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("leader");
    let victim = cluster.index_of(&leader).expect("leader is a node");
    cluster.kill(victim).expect("kill the stream leader");
    assert!(!cluster.is_running(victim));

    for i in TOTAL / 2..TOTAL {
        publish(i).await;
    }
    for seq in 1..=TOTAL {
        let message = eventually(&format!("get {seq}"), Duration::from_secs(20), async || {
            stream.get_raw_message(seq).await
        })
        .await;
        assert_eq!(message.payload, format!("person {}", seq - 1).as_bytes());
    }
    let info = stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, TOTAL);
    let new_leader = info.cluster.and_then(|c| c.leader).expect("new leader");
    assert_ne!(new_leader, leader);

    // The node comes back (healthz waits for its replica to be current) and catches up.
    cluster.start_again(victim).await.expect("start again");
    let name = cluster.server_name(victim).to_string();
    eventually(
        "replica current again",
        Duration::from_secs(20),
        async || {
            let info = stream.get_info().await.map_err(|e| e.to_string())?;
            let cluster = info.cluster.ok_or("no cluster info")?;
            let peer_ok = cluster.replicas.iter().any(|p| p.name == name && p.current)
                || cluster.leader.as_deref() == Some(name.as_str());
            if peer_ok {
                Ok(())
            } else {
                Err(format!("{name} not current: {cluster:?}"))
            }
        },
    )
    .await;
}
