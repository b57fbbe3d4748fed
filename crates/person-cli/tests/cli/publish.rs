use person_events::{PersonId, codec};

use crate::support::{activated, cli, command, messages, start, v1_deactivated};

#[tokio::test]
async fn publish_ndjson_with_one_bad_line_stores_the_rest_and_names_the_line() {
    let (server, client) = start().await;
    let url = server.url();
    let person = PersonId::new();
    let line = |seq: u64| {
        String::from_utf8(codec::encode(&activated(person, seq, "import")).unwrap()).unwrap()
    };
    let text = format!(
        "{}\n{}\n{{\"event_id\": \"broken\"\n{}\n\n{}\n",
        line(1),
        line(2),
        v1_deactivated(person),
        line(3)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, &text).unwrap();
    let path = file.to_str().unwrap();

    let run = cli(&url, &["publish", path]).await;
    assert_eq!(run.code, 4, "partial failure: {run:?}");
    assert!(
        run.stdout.contains("stored 4, duplicate 0, rejected 1"),
        "{run:?}"
    );
    assert!(run.stdout.contains("line 3: not valid JSON"), "{run:?}");
    assert!(run.stderr.contains("1 line(s) rejected"), "{run:?}");
    assert_eq!(messages(&client, "PERSON_EVENTS").await, 4);
    let history = client.reader().load_aggregate(person).await.unwrap();
    assert_eq!(history.len(), 4, "the V1 line reads back upcast");

    // The same file again: every event is a duplicate, nothing new is stored.
    let run = cli(&url, &["publish", "--json", path]).await;
    assert_eq!(run.code, 4, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["stored"], 0);
    assert_eq!(summary["duplicate"], 4);
    assert_eq!(summary["rejected"], 1);
    assert_eq!(summary["results"][2]["line"], 3);
    assert_eq!(summary["results"][2]["outcome"], "rejected");
    assert_eq!(messages(&client, "PERSON_EVENTS").await, 4);

    // From stdin.
    let mut child = command(&url, &["publish", "-"]);
    child.stdin(std::process::Stdio::piped());
    let mut child = child.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(line(4).as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored 1, duplicate 0, rejected 0"));
}

#[tokio::test]
async fn publish_with_version_checks_rejects_a_conflict_and_the_persons_later_lines() {
    let (server, client) = start().await;
    let url = server.url();
    let (existing, fresh) = (PersonId::new(), PersonId::new());
    client
        .publisher()
        .publish(&activated(existing, 1, "already there"))
        .await
        .unwrap();
    let line = |p: PersonId, seq: u64| {
        String::from_utf8(codec::encode(&activated(p, seq, "import")).unwrap()).unwrap()
    };
    // `sequence` 1 claims the person is new: wrong for `existing`.
    let text = [
        line(existing, 1),
        line(fresh, 1),
        line(existing, 2),
        line(fresh, 2),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("import.ndjson");
    std::fs::write(&file, text).unwrap();
    let run = cli(
        &url,
        &[
            "publish",
            "--check-version",
            "--json",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    let summary = run.json();
    let outcomes: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec!["rejected", "stored", "rejected", "stored"],
        "{summary}"
    );
    let reason = summary["results"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("version conflict"), "{reason}");
    let reason = summary["results"][2]["reason"].as_str().unwrap();
    assert!(reason.contains("skipped"), "{reason}");
    assert_eq!(
        client.reader().load_aggregate(fresh).await.unwrap().len(),
        2
    );
    assert_eq!(
        client
            .reader()
            .load_aggregate(existing)
            .await
            .unwrap()
            .len(),
        1
    );
}
