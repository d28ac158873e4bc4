//! Serving an HTTP listener within bounds a hostile client cannot push past: a cap on open
//! connections, overall and per client address (the excess is accepted and closed at once, so
//! the kernel's backlog never fills; at the overall cap a newcomer takes the place of the
//! oldest connection that has not sent a request yet, so a flood of idle connections cannot
//! lock other clients out); a deadline for each request's header, which also ends
//! idle keep-alive and half-open connections; a deadline for a response the client stops
//! reading ([`ConnectionLimits::send_stall_timeout`]), so an unread response cannot hold its
//! memory for ever; and a drain on shutdown that stops accepting, closes idle connections,
//! answers every request already read with `Connection: close` and waits for the rest.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use std::future::Future;

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
    /// Most header fields in one request.
    pub max_headers: usize,
    /// How long a response may wait for the client to take any of it before the connection
    /// is closed.
    pub send_stall_timeout: Duration,
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
    let waiting = Arc::new(AwaitingRequest::default());
    let mut next_id: u64 = 0;
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
        let slot = match admit(&open, &per_client, &limits, peer.ip()) {
            Ok(slot) => Some(slot),
            // Full: the oldest connection still waiting for its first request makes room.
            Err(Refused::Full) if waiting.evict_oldest() => {
                match tokio::time::timeout(EVICTION_WAIT, open.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => take_client_slot(permit, &per_client, &limits, peer.ip()),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(listener = name, %peer, refused, "connection limit reached; refusing connections");
            }
            drop(stream);
            continue;
        };
        next_id += 1;
        let first_request = waiting.register(next_id);
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            shutdown.clone(),
            first_request,
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

/// How long a newcomer waits for the place of the connection it evicted (that connection's
/// task only has to notice and drop its socket).
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The listener holds its maximum.
    Full,
    /// This client address holds its maximum.
    ClientFull,
}

fn admit(
    open: &Arc<Semaphore>,
    counts: &Arc<ClientCounts>,
    limits: &ConnectionLimits,
    client: IpAddr,
) -> Result<Slot, Refused> {
    let permit = open
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refused::Full)?;
    take_client_slot(permit, counts, limits, client).ok_or(Refused::ClientFull)
}

fn take_client_slot(
    permit: OwnedSemaphorePermit,
    counts: &Arc<ClientCounts>,
    limits: &ConnectionLimits,
    client: IpAddr,
) -> Option<Slot> {
    counts
        .try_take(client, limits.max_per_client)
        .then(|| Slot {
            _permit: permit,
            client,
            counts: counts.clone(),
        })
}

/// Connections that have not sent a request yet, oldest first, each with the token that
/// closes it.
#[derive(Default)]
struct AwaitingRequest(Mutex<BTreeMap<u64, CancellationToken>>);

impl AwaitingRequest {
    fn register(self: &Arc<Self>, id: u64) -> FirstRequest {
        let evicted = CancellationToken::new();
        self.0
            .lock()
            .expect("waiting connections lock is never poisoned")
            .insert(id, evicted.clone());
        FirstRequest {
            id,
            evicted,
            seen: AtomicBool::new(false),
            registry: self.clone(),
        }
    }

    /// Closes the oldest connection still waiting for its first request; whether there was
    /// one.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .0
            .lock()
            .expect("waiting connections lock is never poisoned")
            .pop_first();
        oldest.map(|(_, evicted)| evicted.cancel()).is_some()
    }

    fn forget(&self, id: u64) {
        self.0
            .lock()
            .expect("waiting connections lock is never poisoned")
            .remove(&id);
    }
}

/// A connection's entry among those awaiting a request: left at its first request or when
/// the connection ends.
struct FirstRequest {
    id: u64,
    evicted: CancellationToken,
    seen: AtomicBool,
    registry: Arc<AwaitingRequest>,
}

impl FirstRequest {
    fn arrived(&self) {
        if !self.seen.swap(true, Ordering::Relaxed) {
            self.registry.forget(self.id);
        }
    }
}

impl Drop for FirstRequest {
    fn drop(&mut self) {
        self.arrived();
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    first_request: FirstRequest,
    _held: (Slot, mpsc::Sender<()>),
) {
    let _ = stream.set_nodelay(true);
    let evicted = first_request.evicted.clone();
    let first_request = Arc::new(first_request);
    let request_seen = first_request.clone();
    // An eviction that lost the race with the first request is ignored: that request is
    // answered (the newcomer that asked for the place is refused instead).
    let evicted_before_request = async move {
        evicted.cancelled().await;
        if request_seen.seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        first_request.arrived();
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        app.call(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let stream = SendStall::new(stream, limits.send_stall_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        // Only a connection that has not sent a request is ever evicted: nothing to answer.
        _ = evicted_before_request => return,
        _ = shutdown.cancelled() => {}
    }
    // Idle: closed now. Mid-request: the response goes out with `Connection: close`.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A connection whose writes fail once the peer has taken nothing for `limit`.
struct SendStall<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits for the peer.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendStall<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendStall<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S> SendStall<S> {
    /// Passes a write's outcome on, failing it once the peer has taken nothing for `limit`.
    fn checked<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        outcome: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match outcome {
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took none of the response in time",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendStall<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let outcome = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.checked(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let outcome = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.checked(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let outcome = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.checked(cx, outcome)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
            max_headers: 64,
            send_stall_timeout: Duration::from_secs(1),
        };
        let hostile: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.1".parse().unwrap();
        let first = admit(&open, &counts, &limits, hostile).unwrap();
        let _second = admit(&open, &counts, &limits, hostile).unwrap();
        assert_eq!(
            admit(&open, &counts, &limits, hostile).err(),
            Some(Refused::ClientFull)
        );
        let third = admit(&open, &counts, &limits, other).unwrap();
        assert_eq!(
            admit(&open, &counts, &limits, other).err(),
            Some(Refused::Full),
            "all taken"
        );
        drop(third);
        drop(first);
        assert!(admit(&open, &counts, &limits, hostile).is_ok());
        assert_eq!(
            counts.0.lock().unwrap().len(),
            1,
            "no entry outlives its connections"
        );
    }

    #[test]
    fn eviction_takes_the_oldest_connection_still_waiting_for_a_request() {
        let waiting = Arc::new(AwaitingRequest::default());
        let first = waiting.register(1);
        let second = waiting.register(2);
        let third = waiting.register(3);
        // The oldest has sent a request: it is no longer a candidate.
        first.arrived();
        assert!(waiting.evict_oldest());
        assert!(!first.evicted.is_cancelled());
        assert!(second.evicted.is_cancelled());
        assert!(!third.evicted.is_cancelled());
        drop(third);
        assert!(!waiting.evict_oldest(), "nothing left to evict");
    }
}
