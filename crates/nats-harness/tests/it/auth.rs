//! Config snippets: user/password auth, accounts, and limits.

use async_nats::{ConnectErrorKind, ConnectOptions, jetstream};
use nats_harness::{HarnessError, NatsServer, ServerOptions};

#[tokio::test]
async fn user_password_auth() {
    let server = NatsServer::with_config(
        r#"authorization { users: [ { user: alice, password: "wonderland" } ] }"#,
    )
    .await
    .expect("start");

    let client = ConnectOptions::with_user_and_password("alice".into(), "wonderland".into())
        .connect(server.url())
        .await
        .expect("right credentials connect");
    jetstream::new(client)
        .query_account()
        .await
        .expect("JetStream works for the authenticated user");

    let wrong = ConnectOptions::with_user_and_password("alice".into(), "queen".into())
        .connect(server.url())
        .await
        .expect_err("wrong password must fail");
    assert_eq!(wrong.kind(), ConnectErrorKind::AuthorizationViolation);

    let anonymous = async_nats::connect(server.url()).await;
    assert!(anonymous.is_err(), "no credentials must fail");
}

#[tokio::test]
async fn accounts_and_limits_apply_but_ports_stay_the_harness_s() {
    let config = r#"
        port: 4222
        max_payload: 512KB
        jetstream { max_mem: 64MB }
        accounts {
            APP: { jetstream: enabled, users: [ { user: app, password: pw } ] }
        }
    "#;
    let server = NatsServer::with_options(ServerOptions::new().config(config))
        .await
        .expect("start");
    assert_ne!(
        server.port(),
        4222,
        "the harness's port wins over the config"
    );
    assert!(server.store_dir().join("jetstream").is_dir());

    let client = ConnectOptions::with_user_and_password("app".into(), "pw".into())
        .connect(server.url())
        .await
        .expect("connect");
    assert_eq!(client.server_info().max_payload, 512 * 1024);
    jetstream::new(client)
        .query_account()
        .await
        .expect("JetStream enabled for the APP account");
}

#[tokio::test]
async fn a_store_dir_in_the_config_is_refused_up_front() {
    let err = NatsServer::with_config("jetstream { store_dir: \"/tmp/elsewhere\" }")
        .await
        .expect_err("the harness owns the store dir");
    assert!(
        matches!(err, HarnessError::ConfigConflict { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("store_dir"), "{err}");
}
