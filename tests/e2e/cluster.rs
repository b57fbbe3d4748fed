//! Fault 4: a 3-node cluster with an R3 stream; the stream leader is killed, then
//! another node is killed and restarted, while a publisher and a consumer run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nats_harness::NatsCluster;
use person_events::{EventId, PersonId};
use person_streaming::StreamingClient;
use person_subscriptions::{SubscriptionManager, SubscriptionOptions};

use crate::support::{
    CONSUMER, Projection, ProjectionHandler, Row, config, connect, event, eventually, record,
};

/// The stream's leader and whether every replica is current and online.
async fn stream_state(client: &StreamingClient) -> Option<(String, bool)> {
    let mut stream = client.jetstream().get_stream("PERSON_EVENTS").await.ok()?;
    let info = stream.info().await.ok()?;
    let cluster = info.cluster.clone()?;
    let leader = cluster.leader.clone()?;
    let healthy =
        cluster.replicas.len() == 2 && cluster.replicas.iter().all(|p| p.current && !p.offline);
    Some((leader, healthy))
}

async fn wait_for_leader(client: &StreamingClient, not: Option<&str>, healthy: bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some((leader, ok)) = stream_state(client).await
            && Some(leader.as_str()) != not
            && (ok || !healthy)
        {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream leader (other than {not:?}, healthy: {healthy}) within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_and_a_restarted_node_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let mut cfg = config(5);
    cfg.stream.replicas = 3;
    cfg.dlq.replicas = 3;
    let client = connect(&cluster.urls().join(","), cfg).await;
    let leader = wait_for_leader(&client, None, true).await;

    // A publisher: one event at a time, each retried (same envelope, same Nats-Msg-Id)
    // until acknowledged; it stops when told.
    let acked: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let caller_retries = Arc::new(AtomicU64::new(0));
    let publisher_task = {
        let publisher = client.publisher();
        let acked = acked.clone();
        let stop = stop.clone();
        let caller_retries = caller_retries.clone();
        tokio::spawn(async move {
            let people: Vec<PersonId> = (0..50).map(|_| PersonId::new()).collect();
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) {
                seq += 1;
                let env = event(people[(seq % 50) as usize], seq / 50 + 1);
                loop {
                    match publisher.publish(&env).await {
                        Ok(_) => break,
                        Err(e) if e.is_transient() => {
                            caller_retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("publish failed for good: {e}"),
                    }
                }
                acked.lock().unwrap().push(env.event_id);
            }
        })
    };
    let projection = Arc::new(Projection::default());
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().concurrency(16));
    manager.register_handler(Arc::new(ProjectionHandler::new(projection.clone())));
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    let count = || acked.lock().unwrap().len();

    eventually(300, "500 events published", || count() >= 500).await;
    let leader_index = cluster.index_of(&leader).expect("the leader is a node");
    cluster.kill(leader_index).unwrap();
    let at_kill = count();
    let new_leader = wait_for_leader(&client, Some(&leader), false).await;
    eventually(300, "publishing to resume after the election", || {
        count() >= at_kill + 300
    })
    .await;
    let resumed = count() - at_kill;
    cluster.start_again(leader_index).await.unwrap();
    wait_for_leader(&client, None, true).await;

    // Another node: not the one killed first.
    let other = (0..3)
        .find(|i| *i != leader_index && cluster.server_name(*i) != new_leader)
        .expect("a third node");
    cluster.kill(other).unwrap();
    let at_second = count();
    eventually(300, "publishing to go on with a node down", || {
        count() >= at_second + 300
    })
    .await;
    cluster.start_again(other).await.unwrap();
    wait_for_leader(&client, None, true).await;
    let at_restart = count();
    eventually(300, "publishing after the node is back", || {
        count() >= at_restart + 300
    })
    .await;
    stop.store(true, Ordering::Release);
    publisher_task.await.unwrap();

    let published: HashSet<EventId> = acked.lock().unwrap().iter().copied().collect();
    let total = published.len() as u64;
    eventually(600, "every published event handled", || {
        projection.distinct() >= total
    })
    .await;
    handle.shutdown(Duration::from_secs(10)).await;
    let ids = projection.ids();
    let lost = published.difference(&ids).count() as u64;
    let (stored, stored_ids) = crate::support::stored_ids(&client, "PERSON_EVENTS").await;
    let stored_distinct: HashSet<EventId> = stored_ids.into_iter().collect();
    let duplicated = stored - stored_distinct.len() as u64;
    assert_eq!(lost, 0, "published events not handled");
    assert_eq!(duplicated, 0, "events stored twice");
    assert_eq!(
        ids, published,
        "the projection holds exactly the published events"
    );
    assert!(resumed >= 300);
    assert!(projection.errors().is_empty());
    record(
        Row {
            case: "fault-4-cluster",
            area: "cluster",
            what: "3-node cluster, R3 stream; publisher and consumer running throughout".into(),
            load: format!("{total} events published one at a time, consumer concurrency 16"),
            faults:
                "stream leader killed (SIGKILL), restarted; then another node killed and restarted"
                    .into(),
            inputs: total,
            lost,
            duplicated,
            absorbed: projection.absorbed(),
            notes: format!(
                "leader {leader} -> {new_leader}; {resumed} events published after the election before the old leader came back; {} caller-level re-publishes",
                caller_retries.load(Ordering::Relaxed)
            ),
            ..Row::default()
        },
        started,
    );
}
