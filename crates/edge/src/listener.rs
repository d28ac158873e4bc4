//! Serving an HTTP listener within bounds a hostile client cannot push past: a cap on open
//! connections, overall and per client address (the excess is accepted and closed at once, so
//! the kernel's backlog never fills; at the overall cap a newcomer takes the place of the
//! connection idle the longest, one with no request in flight, so a flood of idle connections
//! cannot lock other clients out; an IPv6 client is its /64); a deadline for each request's header, which also ends
//! idle keep-alive and half-open connections; a deadline for a response the client stops
//! reading ([`ConnectionLimits::send_stall_timeout`]), so an unread response cannot hold its
//! memory for ever; and a drain on shutdown that stops accepting, closes idle connections,
//! answers every request already read with `Connection: close` and waits for the rest.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    let idle = Arc::new(IdleConnections::default());
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
            // Full: the connection idle the longest makes room.
            Err(Refused::Full) if idle.evict_oldest() => {
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
        let activity = idle.register();
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            shutdown.clone(),
            activity,
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

/// Who counts as one client: an IPv4 address, or an IPv6 /64 (what one host or one customer of
/// a provider gets; counting single IPv6 addresses would give anyone unlimited clients).
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

impl ClientCounts {
    fn try_take(&self, client: IpAddr, limit: usize) -> bool {
        let mut counts = self.0.lock().expect("client counts lock is never poisoned");
        let count = counts.entry(client_key(client)).or_default();
        if *count >= limit {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, client: IpAddr) {
        let key = client_key(client);
        let mut counts = self.0.lock().expect("client counts lock is never poisoned");
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
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

/// Connections with no request in flight, longest idle first, each with the token that
/// closes it.
#[derive(Default)]
struct IdleConnections {
    idle: Mutex<BTreeMap<u64, CancellationToken>>,
    /// Orders idleness: a connection gets a new number each time it becomes idle.
    next: std::sync::atomic::AtomicU64,
}

impl IdleConnections {
    /// A new connection, idle until its first request.
    fn register(self: &Arc<Self>) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            evicted: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            idle_as: std::sync::atomic::AtomicU64::new(0),
            registry: self.clone(),
        });
        activity.now_idle();
        activity
    }

    /// Closes the connection idle the longest; whether there was one.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .idle
            .lock()
            .expect("idle connections lock is never poisoned")
            .pop_first();
        oldest.map(|(_, evicted)| evicted.cancel()).is_some()
    }
}

/// One connection's requests in flight and its place among the idle ones.
struct Activity {
    evicted: CancellationToken,
    in_flight: AtomicUsize,
    /// Its number among the idle connections while it is idle.
    idle_as: std::sync::atomic::AtomicU64,
    registry: Arc<IdleConnections>,
}

impl Activity {
    fn now_idle(&self) {
        let number = self.registry.next.fetch_add(1, Ordering::Relaxed);
        self.idle_as.store(number, Ordering::Relaxed);
        self.registry
            .idle
            .lock()
            .expect("idle connections lock is never poisoned")
            .insert(number, self.evicted.clone());
    }

    fn no_longer_idle(&self) {
        self.registry
            .idle
            .lock()
            .expect("idle connections lock is never poisoned")
            .remove(&self.idle_as.load(Ordering::Relaxed));
    }

    /// A request arrived; held until its response has been sent (or dropped).
    fn request_started(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.no_longer_idle();
        }
        InFlight(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

impl Drop for Activity {
    /// The connection has ended: it is no candidate any more.
    fn drop(&mut self) {
        self.no_longer_idle();
    }
}

/// A request of a connection between its arrival and the end of its response.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.now_idle();
        }
    }
}

/// A response body that keeps its request counted in flight until it is sent or dropped.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    activity: Arc<Activity>,
    _held: (Slot, mpsc::Sender<()>),
) {
    let _ = stream.set_nodelay(true);
    let evicted = activity.evicted.clone();
    let watched = activity.clone();
    // An eviction that lost the race with a request is ignored: that request is answered
    // (the newcomer that asked for the place is refused instead).
    let evicted_while_idle = async move {
        evicted.cancelled().await;
        if watched.is_busy() {
            std::future::pending::<()>().await;
        }
    };
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        let in_flight = activity.request_started();
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        let response = app.call(request.map(Body::new));
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        }
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
        // Only a connection with no request in flight is ever evicted: nothing to answer.
        _ = evicted_while_idle => return,
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
    fn eviction_takes_the_connection_idle_the_longest_and_never_a_busy_one() {
        let idle = Arc::new(IdleConnections::default());
        let first = idle.register();
        let second = idle.register();
        let third = idle.register();
        // The oldest is serving a request: it is not a candidate until its response is done.
        let request = first.request_started();
        assert!(idle.evict_oldest());
        assert!(!first.evicted.is_cancelled());
        assert!(second.evicted.is_cancelled());
        // Done: idle again, now the newest idle one.
        drop(request);
        assert!(idle.evict_oldest());
        assert!(third.evicted.is_cancelled());
        assert!(!first.evicted.is_cancelled());
        assert!(idle.evict_oldest());
        assert!(first.evicted.is_cancelled());
        assert!(!idle.evict_oldest(), "nothing left to evict");
        // A connection that ended leaves no candidate behind.
        let gone = idle.register();
        drop(gone);
        assert!(!idle.evict_oldest());
    }

    #[test]
    fn an_ipv6_client_is_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }
}
