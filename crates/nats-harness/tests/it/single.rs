//! A single server: persistence across a graceful restart, reconnects after a crash, and
//! lifecycle errors.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event};
use nats_harness::{HarnessError, NatsServer};

use crate::{connect_fast, eventually};

fn file_stream(name: &str, subjects: &str) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

#[tokio::test]
async fn messages_survive_a_graceful_restart() {
    let mut server = NatsServer::start().await.expect("start");
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));

    let js = jetstream::new(connect_fast(server.url()).await);
    let mut stream = js
        .create_stream(file_stream("ORDERS", "orders.>"))
        .await
        .expect("create stream");
    for i in 0..50 {
        js.publish(format!("orders.{}", i % 5), format!("order {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let before = stream.info().await.expect("info").state.clone();
    assert_eq!(before.messages, 50);

    server.restart().await.expect("restart");
    assert_eq!(server.port(), port, "restart keeps the port");
    assert!(server.store_dir().join("jetstream").is_dir());

    let js = jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    let stream = js.get_stream("ORDERS").await.expect("stream after restart");
    let after = stream.get_info().await.expect("info").state;
    assert_eq!(after.messages, before.messages);
    assert_eq!(after.last_sequence, before.last_sequence);
    let last = stream.get_raw_message(50).await.expect("get message 50");
    assert_eq!(&last.payload[..], b"order 49");
    assert_eq!(
        server.log().matches("=== nats-harness: starting").count(),
        2
    );
}

#[tokio::test]
async fn client_reconnects_after_kill_and_start_again() {
    // sync_interval: always makes every acked message durable even through SIGKILL.
    let mut server = NatsServer::with_config("jetstream { sync_interval: always }")
        .await
        .expect("start");
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        .connect(server.url())
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(file_stream("EVENTS", "events.>"))
        .await
        .expect("create stream");
    for i in 0..10 {
        js.publish("events.a", format!("e{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    let old_pid = server.pid().expect("running");
    server.kill();
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err(),
        "nothing listens after kill"
    );
    let disconnected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if matches!(event, Event::Disconnected) {
                return;
            }
        }
    })
    .await;
    assert!(disconnected.is_ok(), "the client noticed the crash");

    server.start_again().await.expect("start again");
    assert_ne!(server.pid(), Some(old_pid));
    eventually(
        "client reconnect",
        Duration::from_secs(10),
        async || match client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(other),
        },
    )
    .await;

    let ack = eventually(
        "publish after reconnect",
        Duration::from_secs(10),
        async || js.publish("events.b", "after".into()).await?.await,
    )
    .await;
    assert_eq!(
        ack.sequence, 11,
        "the 10 messages from before the crash survived"
    );
}

#[tokio::test]
async fn lifecycle_stop_start_again_and_errors() {
    let mut server = NatsServer::start().await.expect("start");
    assert!(matches!(
        server.start_again().await,
        Err(HarnessError::AlreadyRunning { .. })
    ));
    server.stop().await.expect("stop");
    assert!(!server.is_running());
    server
        .stop()
        .await
        .expect("stopping a stopped server is a no-op");
    assert!(server.log().contains("Server Exiting"), "graceful shutdown");
    server.start_again().await.expect("start again");
    assert!(server.is_running());
    async_nats::connect(server.url()).await.expect("connect");
}

#[tokio::test]
async fn a_broken_config_reports_the_server_log() {
    let err = NatsServer::with_config("this is { not a valid config")
        .await
        .expect_err("must not start");
    let message = err.to_string();
    assert!(
        matches!(err, HarnessError::Exited { .. }),
        "unexpected error: {message}"
    );
    assert!(message.contains("log tail"), "{message}");
    assert!(
        message.contains("server.conf"),
        "the log names the config: {message}"
    );
}

#[tokio::test]
async fn servers_are_isolated() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    let dir = a.store_dir().to_path_buf();
    drop(a);
    assert!(!dir.exists(), "drop removes the temp dir");
}
