use std::time::Duration;

use person_events::PersonId;
use person_metadata::EventMetadata;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{
    activated, activated_with, cli, command, consumer_count, eventually, start, v1_deactivated,
};

#[tokio::test]
async fn tail_filters_by_person_correlation_and_type_and_marks_upcast_events() {
    let (server, client) = start().await;
    let url = server.url();
    let (a, b) = (PersonId::new(), PersonId::new());
    let conversation = EventMetadata::new();
    let publisher = client.publisher();
    publisher.publish(&activated(a, 1, "a1")).await.unwrap();
    publisher
        .publish(&activated_with(b, 1, "b1", conversation.clone()))
        .await
        .unwrap();
    publisher.publish(&activated(a, 2, "a2")).await.unwrap();
    client
        .jetstream()
        .publish(
            format!("person.events.{a}.suspended"),
            v1_deactivated(a).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    publisher.publish(&activated(b, 2, "b2")).await.unwrap();

    let run = cli(
        &url,
        &["tail", "--no-follow", "--json", "--person", &a.to_string()],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let docs = run.json_lines();
    let seqs: Vec<u64> = docs
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 3, 4]);
    assert_eq!(docs[0]["upcast_from"], serde_json::Value::Null);
    assert_eq!(docs[2]["upcast_from"], "PersonEvent.v1");
    assert_eq!(docs[2]["envelope"]["event"]["event_type"], "Suspended");

    let human = cli(&url, &["tail", "--no-follow", "--person", &a.to_string()]).await;
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{human:?}");
    assert!(
        lines[2].starts_with("#4  ") && lines[2].ends_with("[upcast from V1]"),
        "{}",
        lines[2]
    );
    assert!(!lines[0].contains("upcast"), "{}", lines[0]);

    let corr = conversation.correlation_id.to_string();
    let run = cli(
        &url,
        &["tail", "--no-follow", "--json", "--correlation", &corr],
    )
    .await;
    let seqs: Vec<u64> = run
        .json_lines()
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2]);

    let run = cli(
        &url,
        &["tail", "--no-follow", "--json", "--type", "Suspended"],
    )
    .await;
    let seqs: Vec<u64> = run
        .json_lines()
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4]);

    let run = cli(&url, &["tail", "--no-follow", "--json", "--last", "2"]).await;
    let seqs: Vec<u64> = run
        .json_lines()
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    let run = cli(
        &url,
        &[
            "tail",
            "--no-follow",
            "--json",
            "--last",
            "2",
            "--type",
            "activated",
        ],
    )
    .await;
    let seqs: Vec<u64> = run
        .json_lines()
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 5]);

    let bad = cli(&url, &["tail", "--type", "nope"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("not an event type"), "{bad:?}");
}

#[tokio::test]
async fn tail_follows_new_events_and_stops_on_ctrl_c() {
    let (server, client) = start().await;
    let url = server.url();
    let person = PersonId::new();
    client
        .publisher()
        .publish(&activated(person, 1, "old"))
        .await
        .unwrap();

    // Follow with a limit: the two events published after it started, then exit.
    let child = command(&url, &["tail", "--json", "--limit", "2"])
        .spawn()
        .unwrap();
    eventually("the tail's reader", async || {
        consumer_count(&client, "PERSON_EVENTS").await > 4
    })
    .await;
    client
        .publisher()
        .publish(&activated(person, 2, "new 1"))
        .await
        .unwrap();
    client
        .publisher()
        .publish(&activated(person, 3, "new 2"))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reasons: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["envelope"]["event"]["data"]["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons, vec!["new 1", "new 2"]);

    // Follow without a limit: Ctrl-C ends it, cleanly.
    let mut child = command(&url, &["tail", "--last", "1"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("new 2"), "{first}");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("tail stops on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
