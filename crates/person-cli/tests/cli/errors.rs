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
