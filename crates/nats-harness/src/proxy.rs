//! [`TcpProxy`]: a TCP proxy on loopback in front of a server, for the faults a server
//! kill cannot place precisely: a connection cut after a given number of bytes, a
//! client whose bytes stop reaching the server, replies that stop reaching the client.
//!
//! ```no_run
//! use nats_harness::{NatsServer, TcpProxy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = NatsServer::start().await?;
//! let proxy = TcpProxy::start(server.port()).await?;
//! let client = async_nats::connect(proxy.url()).await?;
//! // The connection is cut once 1,000 more bytes went from the client to the server.
//! proxy.cut_after(1_000);
//! // ... publish ...
//! assert_eq!(proxy.tripped(), 1);
//! # drop(client);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What an armed limit does once its bytes have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    /// Close every connection.
    Cut,
    /// Stop forwarding client bytes until the next cut.
    Stall,
}

#[derive(Debug, Default)]
struct State {
    /// Client bytes forwarded to the server, in all.
    to_server: u64,
    /// Bytes left before the armed limit trips.
    limit: Option<(u64, Trip)>,
    /// Client bytes are not forwarded (a stall tripped) until the next cut.
    stalled: bool,
    /// Limits that tripped.
    tripped: u64,
    /// Connections accepted.
    connections: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: u16,
    state: Mutex<State>,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// Server bytes are not forwarded to clients while `true`.
    hold: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cut(&self) {
        self.state().stalled = false;
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Of `n` client bytes just read, how many pass, and what happens after them.
    fn take(&self, n: usize) -> (usize, Option<Trip>) {
        let mut s = self.state();
        if s.stalled {
            return (0, Some(Trip::Stall));
        }
        let (pass, trip) = match s.limit {
            None => (n, None),
            Some((left, trip)) => {
                let pass = usize::try_from(left).map_or(n, |l| l.min(n));
                let left = left - pass as u64;
                if left == 0 {
                    s.limit = None;
                    s.tripped += 1;
                    if trip == Trip::Stall {
                        s.stalled = true;
                    }
                    (pass, Some(trip))
                } else {
                    s.limit = Some((left, trip));
                    (pass, None)
                }
            }
        };
        s.to_server += pass as u64;
        (pass, trip)
    }
}

/// A TCP proxy on a free loopback port that forwards every connection to
/// `127.0.0.1:<upstream port>`. Dropping it closes every connection.
///
/// Client bytes are counted as they are forwarded; a limit armed with
/// [`cut_after`](Self::cut_after) or [`stall_after`](Self::stall_after) counts from the
/// moment it is armed, across connections. A cut closes the connections open at that
/// moment; new connections (a client reconnecting) are accepted and forwarded as usual.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy in front of `127.0.0.1:<upstream>` (a server's
    /// [`port`](crate::NatsServer::port), which stays the same across restarts).
    pub async fn start(upstream: u16) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            cuts: watch::channel(0).0,
            hold: watch::channel(false).0,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TcpProxy {
            port,
            shared,
            accept,
        })
    }

    /// The URL clients connect to, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Client bytes forwarded to the server so far, over every connection.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.state().to_server
    }

    /// Connections accepted so far (a client that reconnected counts twice).
    pub fn connections(&self) -> u64 {
        self.shared.state().connections
    }

    /// Closes every open connection now. A stall ends with it.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Once `bytes` more client bytes have been forwarded, closes every connection: the
    /// server receives exactly those bytes, nothing after them. Replaces any armed limit.
    pub fn cut_after(&self, bytes: u64) {
        self.arm(bytes, Trip::Cut);
    }

    /// Once `bytes` more client bytes have been forwarded, stops forwarding client bytes
    /// (the ones read after them are dropped) until the next [`cut`](Self::cut): the
    /// server has received exactly those bytes and waits for the rest. Replaces any armed
    /// limit.
    pub fn stall_after(&self, bytes: u64) {
        self.arm(bytes, Trip::Stall);
    }

    fn arm(&self, bytes: u64, trip: Trip) {
        let mut s = self.shared.state();
        if bytes == 0 {
            s.tripped += 1;
            match trip {
                Trip::Stall => s.stalled = true,
                Trip::Cut => {
                    drop(s);
                    self.shared.cut();
                }
            }
            return;
        }
        s.limit = Some((bytes, trip));
    }

    /// Drops the armed limit, if it has not tripped yet.
    pub fn disarm(&self) {
        self.shared.state().limit = None;
    }

    /// Armed limits that tripped so far.
    pub fn tripped(&self) -> u64 {
        self.shared.state().tripped
    }

    /// Whether client bytes are stalled (a [`stall_after`](Self::stall_after) tripped and
    /// no cut came since).
    pub fn is_stalled(&self) -> bool {
        self.shared.state().stalled
    }

    /// While `true`, the server's bytes (replies, acks, messages) are held back from
    /// clients: delivered when it is set back to `false`, lost if the connection is cut
    /// first. Client bytes still reach the server.
    pub fn hold_replies(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.state().connections += 1;
        // Subscribed before the task starts: a cut from now on ends this connection.
        let cuts = shared.cuts.subscribe();
        tokio::spawn(serve(client, shared.clone(), cuts));
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>, mut cuts: watch::Receiver<u64>) {
    let generation = *cuts.borrow_and_update();
    let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)).await else {
        // Nothing listens (the server is down): the client sees its connection closed.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    tokio::select! {
        biased;
        _ = cuts.changed() => {}
        _ = to_server(client_r, server_w, &shared) => {}
        _ = to_client(server_r, client_w, &shared, generation) => {}
    }
}

async fn to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let (pass, trip) = shared.take(n);
        to.write_all(&buf[..pass]).await?;
        match trip {
            None => {}
            Some(Trip::Cut) => {
                to.flush().await?;
                shared.cut();
                return Ok(());
            }
            // Until the cut that ends this connection.
            Some(Trip::Stall) => std::future::pending::<()>().await,
        }
    }
}

async fn to_client(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    generation: u64,
) -> io::Result<()> {
    let mut hold = shared.hold.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        while *hold.borrow_and_update() {
            if hold.changed().await.is_err() {
                return Ok(());
            }
        }
        // Held bytes are lost with a cut, even one followed at once by the release.
        if *shared.cuts.borrow() != generation {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}
