//! A component's stdout or stderr, captured per request.
//!
//! Wasmtime's `MemoryOutputPipe` fails the guest's writes once full and cannot be emptied, so
//! an instance serving several requests (`--reuse`) would run out of room and mix requests'
//! lines. This pipe is taken after each request, and past its per-request capacity it drops
//! output and remembers that it did, instead of failing the guest.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Default)]
struct Captured {
    bytes: BytesMut,
    truncated: bool,
}

/// What one request wrote to a stream.
pub struct RequestOutput {
    pub bytes: Bytes,
    /// The request wrote more than the capacity; the excess was dropped.
    pub truncated: bool,
}

#[derive(Clone)]
pub struct OutputCapture {
    capacity: usize,
    captured: Arc<Mutex<Captured>>,
}

impl OutputCapture {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            captured: Arc::default(),
        }
    }

    /// What was written since the last call; the next request starts with an empty buffer.
    pub fn take(&self) -> RequestOutput {
        let captured = std::mem::take(&mut *self.lock());
        RequestOutput {
            bytes: captured.bytes.freeze(),
            truncated: captured.truncated,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured
            .lock()
            .expect("output lock is never held across a panic")
    }

    fn append(&self, bytes: &[u8]) {
        let mut captured = self.lock();
        let room = self.capacity.saturating_sub(captured.bytes.len());
        if bytes.len() > room {
            captured.truncated = true;
        }
        captured
            .bytes
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: output past the capacity is dropped, not refused.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_take_returns_one_requests_output_and_excess_is_dropped() {
        let capture = OutputCapture::new(8);
        capture.append(b"hello\n");
        let first = capture.take();
        assert_eq!(&first.bytes[..], b"hello\n");
        assert!(!first.truncated);

        capture.append(b"0123456789");
        let second = capture.take();
        assert_eq!(&second.bytes[..], b"01234567");
        assert!(second.truncated);
        assert!(capture.take().bytes.is_empty());
    }
}
