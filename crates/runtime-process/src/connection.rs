//! An HTTP/1.1 connection to a worker, bounded in what its answers may carry besides data.
//!
//! A worker is the function's process: its code can write anything on the connection. Bytes
//! that carry no body data (answer heads, informational `1xx` answers, chunk framing such as a
//! chunk size padded with zeros) cost Gust parsing and answer nobody, and count against no
//! limit of the function's: without a bound a function could keep a Gust thread busy for its
//! whole timeout. So each exchange may read at most [`OVERHEAD_LIMIT`] bytes more than the body
//! data it delivered (with a small allowance per piece of data for its framing); past that the
//! connection fails, and the worker is stopped like one that broke off its answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use gust_executor::RequestBody;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes an exchange may read beyond the body data it delivers: far above any honest answer's
/// head (hyper refuses heads over about 400 KiB), and a few milliseconds of parsing.
const OVERHEAD_LIMIT: i64 = 4 << 20;
/// The framing each delivered piece of data may bring with it (a chunk's size line and line
/// ends): a stream of many small chunks, honest server-sent events for days, never adds up,
/// while a chunk size padded with endless zeros delivers nothing and does.
const FRAME_ALLOWANCE: i64 = 32;

/// Bytes read minus body data delivered, since the connection's last request.
#[derive(Default)]
struct Overhead(AtomicI64);

impl Overhead {
    /// A new exchange begins.
    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn read(&self, bytes: usize) {
        self.0.fetch_add(bytes as i64, Ordering::Relaxed);
    }

    /// Body data handed on, with its framing allowance.
    fn delivered(&self, bytes: usize) {
        self.0
            .fetch_sub(bytes as i64 + FRAME_ALLOWANCE, Ordering::Relaxed);
    }

    fn exceeded(&self) -> bool {
        self.0.load(Ordering::Relaxed) > OVERHEAD_LIMIT
    }
}

/// A connection to a worker.
pub struct Connection {
    sender: SendRequest<RequestBody>,
    overhead: Arc<Overhead>,
}

impl Connection {
    /// Opens HTTP/1.1 over `stream`; `None` when the handshake fails.
    pub async fn handshake<S>(stream: S) -> Option<Self>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let overhead = Arc::new(Overhead::default());
        let metered = Metered {
            inner: stream,
            overhead: overhead.clone(),
        };
        let (sender, connection) = http1::handshake(TokioIo::new(metered)).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Some(Self { sender, overhead })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        self.sender.ready().await
    }

    /// Sends `request` and waits for its answer's head; the request back when it could not go
    /// out (the connection had closed).
    pub async fn try_send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<WorkerBody>, Option<Request<RequestBody>>> {
        self.overhead.reset();
        match self.sender.try_send_request(request).await {
            Ok(response) => Ok(self.body_of(response)),
            Err(mut err) => Err(err.take_message()),
        }
    }

    /// Sends `request` and waits for its answer's head.
    pub async fn send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> Option<Response<WorkerBody>> {
        self.overhead.reset();
        let response = self.sender.send_request(request).await.ok()?;
        Some(self.body_of(response))
    }

    /// Whether the last exchange failed for reading too much that was not body data.
    pub fn overran(&self) -> bool {
        self.overhead.exceeded()
    }

    fn body_of(&self, response: Response<Incoming>) -> Response<WorkerBody> {
        response.map(|inner| WorkerBody {
            inner,
            overhead: self.overhead.clone(),
        })
    }
}

/// An answer's body from a worker: each piece of data delivered, and its framing allowance, is
/// credited to the connection's overhead count.
pub struct WorkerBody {
    inner: Incoming,
    overhead: Arc<Overhead>,
}

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.overhead.delivered(data.len());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The worker's stream, counting what is read from it.
struct Metered<S> {
    inner: S,
    overhead: Arc<Overhead>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.overhead.exceeded() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the worker sent too much besides body data",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.overhead.read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Sends one request over a fresh connection to a "worker" that answers with `answer`
    /// (written in pieces as the connection takes them); the body as read, or the error.
    async fn answered_with(answer: Vec<u8>) -> Result<usize, String> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = theirs.read(&mut request).await;
            for piece in answer.chunks(1 << 16) {
                if theirs.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut connection = Connection::handshake(ours).await.unwrap();
        let request = Request::get("/")
            .header("host", "gust-worker")
            .body(RequestBody::full(Bytes::new()))
            .unwrap();
        let response = connection
            .send_request(request)
            .await
            .ok_or("no answer's head")?;
        let body = response.into_body().collect().await;
        body.map(|body| body.to_bytes().len())
            .map_err(|e| e.to_string())
    }

    fn chunked(chunks: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in chunks {
            answer.extend_from_slice(chunk.as_slice());
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    }

    #[tokio::test]
    async fn a_stream_of_tiny_chunks_is_read_to_its_end() {
        // A million one-byte chunks: 6 MB of framing for 1 MB of data, as a long stream of
        // small events brings.
        let answer = chunked((0..1_000_000).map(|_| b"1\r\nx\r\n".to_vec()));
        assert!(answer.len() as i64 > OVERHEAD_LIMIT);
        assert_eq!(answered_with(answer).await, Ok(1_000_000));
    }

    #[tokio::test]
    async fn a_chunk_size_padded_with_endless_zeros_is_cut_off() {
        let zeros = vec![b'0'; 2 * OVERHEAD_LIMIT as usize];
        let answer = chunked(std::iter::once(zeros));
        assert!(answered_with(answer).await.is_err());
    }

    #[tokio::test]
    async fn informational_answers_without_end_are_cut_off() {
        let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(400_000);
        answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged");
        assert_eq!(
            answered_with(answer).await,
            Err("no answer's head".to_owned())
        );
    }

    #[tokio::test]
    async fn a_large_body_is_not_overhead() {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 << 20).into_bytes();
        answer.resize(answer.len() + (64 << 20), b'x');
        assert_eq!(answered_with(answer).await, Ok(64 << 20));
    }
}
