use futures::StreamExt;

use crate::support::cli;

#[tokio::test]
async fn no_server_is_a_connection_error_with_a_hint() {
    let run = cli("nats://127.0.0.1:1", &["status"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("error: cannot connect to nats://127.0.0.1:1"),
        "{run:?}"
    );
    assert!(run.stderr.contains("hint: is a server running"), "{run:?}");
}

#[tokio::test]
async fn usage_errors_exit_with_2() {
    for args in [
        &["status", "--bogus"][..],
        &["dlq", "replay"],
        &["dlq", "list", "--since", "yesterday"],
        &["tail", "--person", "not-a-uuid"],
    ] {
        let run = cli("nats://127.0.0.1:1", args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
}

#[tokio::test]
async fn every_command_has_examples_and_completions_are_generated() {
    let top = cli("nats://127.0.0.1:1", &["--help"]).await;
    assert_eq!(top.code, 0);
    assert!(top.stdout.contains("Exit codes:"), "{}", top.stdout);
    for command in [
        &["setup"][..],
        &["status"],
        &["tail"],
        &["publish"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["dlq", "purge"],
        &["bench"],
        &["completions"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = cli("nats://127.0.0.1:1", &args).await;
        assert_eq!(run.code, 0, "{args:?}");
        assert!(run.stdout.contains("Examples:"), "{args:?}: {}", run.stdout);
    }
    let run = cli("nats://127.0.0.1:1", &["completions", "bash"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("person-stream"), "{}", run.stdout);
    assert!(run.stdout.contains("replay"));
}

#[tokio::test]
async fn credentials_are_passed_on_and_wrong_ones_are_a_connection_error() {
    let server = nats_harness::NatsServer::with_config(
        "authorization { users: [ { user: svc, password: s3cret } ] }",
    )
    .await
    .unwrap();
    let url = server.url();
    let wrong = cli(&url, &["status", "--user", "svc", "--password", "wrong"]).await;
    assert_eq!(wrong.code, 3, "{wrong:?}");
    assert!(
        wrong.stderr.contains("hint: check --user/--password"),
        "{wrong:?}"
    );
    let setup = cli(&url, &["setup", "--user", "svc", "--password", "s3cret"]).await;
    assert_eq!(setup.code, 0, "{setup:?}");
    let status = cli(&url, &["--user", "svc", "--password", "s3cret", "status"]).await;
    assert_eq!(status.code, 0, "{status:?}");
}

#[tokio::test]
async fn bench_measures_on_a_throwaway_stream_and_removes_it() {
    let (server, client) = crate::support::start().await;
    let run = cli(&server.url(), &["bench", "--count", "300", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let figures = run.json();
    assert_eq!(figures["events"], 300);
    assert!(figures["publish_events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(figures["consume_events_per_sec"].as_f64().unwrap() > 0.0);
    let mut names: Vec<String> = client
        .jetstream()
        .stream_names()
        .map(Result::unwrap)
        .collect()
        .await;
    names.sort();
    assert_eq!(
        names,
        vec![
            "OBJ_PERSON_EVENTS_DLQ_BODIES",
            "PERSON_EVENTS",
            "PERSON_EVENTS_DLQ"
        ],
        "only what the configuration ensures is left"
    );
}
