use nats_harness::NatsServer;

use crate::support::{activated, cli, start};

#[tokio::test]
async fn setup_is_idempotent_and_the_dry_run_changes_nothing() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();

    let plan = cli(&url, &["setup", "--dry-run"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout
            .contains("would create streams: PERSON_EVENTS, PERSON_EVENTS_DLQ"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("nothing was changed"), "{plan:?}");
    let status = cli(&url, &["status"]).await;
    assert_eq!(status.code, 1, "a dry run creates nothing: {status:?}");
    assert!(
        status.stderr.contains("hint: `person-stream setup`"),
        "{status:?}"
    );

    let first = cli(&url, &["setup", "--json"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    let report = first.json();
    assert_eq!(report["created_consumers"].as_array().unwrap().len(), 4);
    let again = cli(&url, &["setup"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("everything is up to date"),
        "{again:?}"
    );
    let json = cli(&url, &["setup", "--json"]).await.json();
    assert_eq!(json["unchanged"], true, "{json}");

    // A config file that changes one setting: the dry run names it, setup applies it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("person-streaming.toml");
    std::fs::write(&file, "[stream]\nmax_age_secs = 3600\n").unwrap();
    let config = file.to_str().unwrap();
    let plan = cli(&url, &["setup", "--config", config, "--dry-run"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout.contains("would update streams: PERSON_EVENTS"),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("max_age 31536000s -> 3600s"),
        "{plan:?}"
    );
    assert!(
        cli(&url, &["setup", "--config", config])
            .await
            .stdout
            .contains("updated streams: PERSON_EVENTS")
    );
    assert!(
        cli(&url, &["setup", "--config", config])
            .await
            .stdout
            .contains("everything is up to date")
    );

    // A bad config file is a usage error naming the field.
    std::fs::write(&file, "[stream]\nreplicas = 0\n").unwrap();
    let bad = cli(&url, &["setup", "--config", config]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("stream.replicas"), "{bad:?}");
}

#[tokio::test]
async fn status_numbers_match_the_stream() {
    let (server, client) = start().await;
    let person = person_events::PersonId::new();
    for i in 1..=5 {
        client
            .publisher()
            .publish(&activated(person, i, "step"))
            .await
            .unwrap();
    }
    let mut stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();

    let run = cli(&server.url(), &["status", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let status = run.json();
    let events = &status["streams"][0];
    assert_eq!(events["name"], "PERSON_EVENTS");
    assert_eq!(events["messages"], state.messages);
    assert_eq!(events["bytes"], state.bytes);
    assert_eq!(events["first_sequence"], state.first_sequence);
    assert_eq!(events["last_sequence"], state.last_sequence);
    let consumers = events["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 4, "{status}");
    for c in consumers {
        // person-to-location only takes location events.
        let expected = if c["name"] == "person-to-location" {
            0
        } else {
            5
        };
        assert_eq!(c["pending"], expected, "{c}");
        assert_eq!(c["ack_pending"], 0, "{c}");
        assert_eq!(c["redelivered"], 0, "{c}");
    }
    assert_eq!(status["streams"][1]["name"], "PERSON_EVENTS_DLQ");
    assert_eq!(status["dead_letters"].as_array().unwrap().len(), 0);

    let table = cli(&server.url(), &["status"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let row = |first: &str, second: &str| -> Vec<String> {
        table
            .stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.len() > 2 && cells[0] == first && cells[1] == second)
            .unwrap_or_else(|| panic!("no row {first} {second}: {}", table.stdout))
    };
    assert_eq!(
        row("PERSON_EVENTS", "5").last().unwrap(),
        "5",
        "{}",
        table.stdout
    );
    assert_eq!(row("PERSON_EVENTS", "person-projection-summary")[2], "5");
    assert!(
        table.stdout.contains("dead letters: none"),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn status_reports_a_missing_dlq_stream_and_consumer_as_rows() {
    let (server, client) = start().await;
    let js = client.jetstream();
    js.delete_stream("PERSON_EVENTS_DLQ").await.unwrap();
    js.get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .delete_consumer("person-projection-search")
        .await
        .unwrap();

    let run = cli(&server.url(), &["status", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let status = run.json();
    assert_eq!(status["streams"][1]["name"], "PERSON_EVENTS_DLQ");
    assert_eq!(status["streams"][1]["exists"], false, "{status}");
    let missing: Vec<_> = status["streams"][0]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["exists"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(missing, ["person-projection-search"], "{status}");

    let run = cli(&server.url(), &["status"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("PERSON_EVENTS_DLQ (missing"), "{run:?}");
    assert!(
        run.stdout.contains("person-projection-search (missing"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("the DLQ stream does not exist"),
        "{run:?}"
    );

    // The library answers the same, and per consumer.
    let search = client
        .consumer_status("person-projection-search")
        .await
        .unwrap();
    assert!(!search.exists);
    let summary = client
        .consumer_status("person-projection-summary")
        .await
        .unwrap();
    assert!(summary.exists && summary.durable);
}
