//! Serving an HTTP listener within bounds a hostile client cannot push past: a cap on open
//! connections, overall and per client address (the excess is accepted and closed at once, so
//! the kernel's backlog never fills); a deadline for each request's header, which also ends
//! idle keep-alive and half-open connections; and a drain on shutdown that stops accepting,
//! closes idle connections, answers every request already read with `Connection: close` and
//! waits for the rest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// How many connections a listener holds open and how long a client may take.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at once, all clients together.
    pub max_connections: usize,
    /// Open connections at once from one client address.
    pub max_per_client: usize,
    /// Time a client has to send a whole request header, counted from when the connection
    /// opened or its previous response was sent: slow headers, idle keep-alive and half-open
    /// connections all end there.
    pub header_read_timeout: Duration,
    /// Largest request header (all lines together) read into memory.
    pub max_header_bytes: usize,
}

/// Serves `app` on `listener` until `shutdown`, then drains: returns once every connection
/// has closed. `name` labels the listener in logs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(ClientCounts::default());
    // Every connection task holds a sender; the drain is over when the last one is dropped.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, most likely: let connections close, then go on.
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = admit(&open, &per_client, &limits, peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(listener = name, %peer, refused, "connection limit reached; refusing connections");
            }
            drop(stream);
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            shutdown.clone(),
            (slot, alive.clone()),
        ));
    }
    drop(listener);
    drop(alive);
    let _ = drained.recv().await;
}

/// A connection's place under the limits; released when the connection ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    client: IpAddr,
    counts: Arc<ClientCounts>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.release(self.client);
    }
}

/// Open connections per client address; holds an entry only while its count is above zero.
#[derive(Default)]
struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    fn try_take(&self, client: IpAddr, limit: usize) -> bool {
        let mut counts = self.0.lock().expect("client counts lock is never poisoned");
        let count = counts.entry(client).or_default();
        if *count >= limit {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, client: IpAddr) {
        let mut counts = self.0.lock().expect("client counts lock is never poisoned");
        if let Some(count) = counts.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&client);
            }
        }
    }
}

fn admit(
    open: &Arc<Semaphore>,
    counts: &Arc<ClientCounts>,
    limits: &ConnectionLimits,
    client: IpAddr,
) -> Option<Slot> {
    let permit = open.clone().try_acquire_owned().ok()?;
    counts
        .try_take(client, limits.max_per_client)
        .then(|| Slot {
            _permit: permit,
            client,
            counts: counts.clone(),
        })
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    _held: (Slot, mpsc::Sender<()>),
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        app.call(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    // Idle: closed now. Mid-request: the response goes out with `Connection: close`.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_at_its_limit_is_refused_and_others_are_not() {
        let open = Arc::new(Semaphore::new(3));
        let counts = Arc::new(ClientCounts::default());
        let limits = ConnectionLimits {
            max_connections: 3,
            max_per_client: 2,
            header_read_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
        };
        let hostile: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.1".parse().unwrap();
        let first = admit(&open, &counts, &limits, hostile).unwrap();
        let _second = admit(&open, &counts, &limits, hostile).unwrap();
        assert!(admit(&open, &counts, &limits, hostile).is_none());
        let third = admit(&open, &counts, &limits, other).unwrap();
        assert!(admit(&open, &counts, &limits, other).is_none(), "all taken");
        drop(third);
        drop(first);
        assert!(admit(&open, &counts, &limits, hostile).is_some());
        assert_eq!(
            counts.0.lock().unwrap().len(),
            1,
            "no entry outlives its connections"
        );
    }
}
