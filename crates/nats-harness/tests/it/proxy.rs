//! The proxy: it forwards, holds replies back, cuts connections (at once or after a
//! byte count) and stalls a client's bytes; a client reconnects through it.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use nats_harness::{NatsServer, TcpProxy};

use crate::{connect_fast, eventually};

/// Whether a request on `subject` (answered by a responder on the direct connection)
/// gets its answer within 300 ms.
async fn answered(client: &Client, subject: &str) -> bool {
    tokio::time::timeout(
        Duration::from_millis(300),
        client.request(subject.to_owned(), "ping".into()),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn the_proxy_holds_replies_cuts_and_stalls_and_clients_reconnect_through_it() {
    let server = NatsServer::start().await.expect("start");
    let proxy = TcpProxy::start(server.port()).await.expect("proxy");
    let direct = connect_fast(server.url()).await;
    let mut requests = direct.subscribe("svc").await.expect("subscribe");
    let responder = direct.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, "pong".into()).await;
            }
        }
    });
    direct.flush().await.expect("flush");
    let client = connect_fast(proxy.url()).await;
    assert!(answered(&client, "svc").await);
    assert_eq!(proxy.connections(), 1);
    assert!(proxy.bytes_to_server() > 0);

    // Held replies do not arrive; released, they do.
    proxy.hold_replies(true);
    assert!(!answered(&client, "svc").await, "a reply passed the hold");
    proxy.hold_replies(false);
    assert!(answered(&client, "svc").await);

    // A cut: the client reconnects through the proxy.
    proxy.cut();
    eventually(
        "a request after the cut",
        Duration::from_secs(10),
        async || {
            answered(&client, "svc")
                .await
                .then_some(())
                .ok_or("no answer")
        },
    )
    .await;
    assert_eq!(proxy.connections(), 2);

    // A cut after 10 bytes trips once the request passes them.
    proxy.cut_after(10);
    let _ = answered(&client, "svc").await;
    assert_eq!(proxy.tripped(), 1);
    eventually(
        "a request after the cut",
        Duration::from_secs(10),
        async || {
            answered(&client, "svc")
                .await
                .then_some(())
                .ok_or("no answer")
        },
    )
    .await;
    assert_eq!(proxy.connections(), 3);

    // A stall: nothing the client sends reaches the server until the next cut.
    proxy.stall_after(0);
    assert!(proxy.is_stalled());
    let sent = proxy.bytes_to_server();
    assert!(
        !answered(&client, "svc").await,
        "a request passed the stall"
    );
    assert_eq!(proxy.bytes_to_server(), sent);
    proxy.cut();
    assert!(!proxy.is_stalled());
    eventually(
        "a request after the stall",
        Duration::from_secs(10),
        async || {
            answered(&client, "svc")
                .await
                .then_some(())
                .ok_or("no answer")
        },
    )
    .await;
}
