//! A request's body on its way to an instance. A caller's body arrives as a [`Payload`]: in
//! memory already (a queue message, a timer's tick, a stored async invocation) or still
//! arriving on the caller's connection. The executor reads an arriving body whole before it
//! takes an instance (so a slow client never holds one), unless the function streams request
//! bodies (`--request-body stream`): then the instance gets the body as it arrives, and the
//! function's timeout bounds how long a slow client can keep it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use thiserror::Error;

/// Why a caller's request body did not arrive whole.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestBodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Every byte of the listeners' body budget is taken by other requests.
    #[error("too many request bodies are in flight; try again")]
    OverBudget,
    /// The client sent its body slower than the listener's minimum rate, or paused too long.
    #[error("the request body arrived too slowly ({0})")]
    TooSlow(&'static str),
    /// The client stopped sending or sent a malformed body.
    #[error("the request body could not be read")]
    Unreadable,
}

/// Something held while a buffered body is in memory (the listener's body budget); dropped
/// when the request's response has ended.
pub type BodyHold = Box<dyn Send + Sync>;

/// A body still arriving on the caller's connection, within the listener's bounds.
#[async_trait]
pub trait IncomingBody: Send {
    /// Reads it whole (refused past the listener's body limit or memory budget, or when it
    /// arrives too slowly), with the hold that keeps its memory counted.
    async fn read_whole(self: Box<Self>) -> Result<(Bytes, BodyHold), RequestBodyError>;

    /// Passes it on as it arrives, failing when it arrives too slowly.
    fn stream(self: Box<Self>) -> UnsyncBoxBody<Bytes, RequestBodyError>;
}

/// What a caller sent as the body of an invocation.
pub enum Payload {
    /// All in memory.
    Ready(Bytes),
    /// Still arriving from the caller.
    Arriving(Box<dyn IncomingBody>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Ready(bytes) => write!(f, "Ready({} bytes)", bytes.len()),
            Payload::Arriving(_) => f.write_str("Arriving"),
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Ready(bytes)
    }
}

/// The body an instance sends on to its function: whole, or streaming as it arrives.
pub struct RequestBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Streaming {
        inner: UnsyncBoxBody<Bytes, RequestBodyError>,
        watch: Arc<BodyWatch>,
    },
}

impl RequestBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        RequestBody(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// A streaming body, and the watch that tells whether it was delivered whole.
    pub fn streaming(inner: UnsyncBoxBody<Bytes, RequestBodyError>) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        // An empty body (a GET) is delivered before anyone polls it.
        watch.note_end(inner.is_end_stream());
        let body = RequestBody(Kind::Streaming {
            inner,
            watch: watch.clone(),
        });
        (body, watch)
    }
}

impl RequestBody {
    /// The watch of a streaming body; `None` for a whole one.
    pub fn watch(&self) -> Option<Arc<BodyWatch>> {
        match &self.0 {
            Kind::Full(_) => None,
            Kind::Streaming { watch, .. } => Some(watch.clone()),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Full(bytes) => write!(f, "Full({} bytes)", bytes.as_ref().map_or(0, Bytes::len)),
            Kind::Streaming { .. } => f.write_str("Streaming"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming { inner, watch } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => watch.note_end(true),
                    // A body of declared length ends with its last byte: the connection
                    // sending it does not poll again.
                    Poll::Ready(Some(Ok(_))) => watch.note_end(inner.is_end_stream()),
                    Poll::Ready(Some(Err(err))) => {
                        let _ = watch.fault.set(err.clone());
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming { inner, .. } => inner.size_hint(),
        }
    }
}

/// Whether a streaming request body reached its instance whole. An instance whose body did
/// not (the caller broke off, or the function answered before reading it all) is not given
/// another request: its connection may still hold part of this one.
#[derive(Debug, Default)]
pub struct BodyWatch {
    complete: AtomicBool,
    fault: OnceLock<RequestBodyError>,
}

impl BodyWatch {
    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn note_end(&self, ended: bool) {
        if ended {
            self.complete.store(true, Ordering::Release);
        }
    }

    /// Why the caller's body broke off, if it did.
    pub fn fault(&self) -> Option<RequestBodyError> {
        self.fault.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_streaming_body_reports_whether_it_was_delivered_whole() {
        let chunks = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, RequestBodyError>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]));
        let (body, watch) = RequestBody::streaming(chunks.boxed_unsync());
        assert!(!watch.complete());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
        assert!(watch.complete());
        assert_eq!(watch.fault(), None);

        let broken = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err(RequestBodyError::TooSlow("test")),
        ]));
        let (body, watch) = RequestBody::streaming(broken.boxed_unsync());
        assert!(body.collect().await.is_err());
        assert!(!watch.complete());
        assert_eq!(watch.fault(), Some(RequestBodyError::TooSlow("test")));
    }

    #[tokio::test]
    async fn a_body_of_declared_length_or_none_is_whole_without_a_last_poll() {
        let declared = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let (mut body, watch) = RequestBody::streaming(declared);
        assert!(!watch.complete());
        body.frame().await.unwrap().unwrap();
        assert!(watch.complete(), "its last byte is its end");

        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let (_body, watch) = RequestBody::streaming(empty);
        assert!(watch.complete(), "nothing to deliver");
    }

    #[tokio::test]
    async fn a_full_body_is_one_frame_with_its_exact_length() {
        let body = RequestBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert!(RequestBody::full(Bytes::new()).is_end_stream());
    }
}
