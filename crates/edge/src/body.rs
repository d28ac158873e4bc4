//! A caller's request body within three bounds: its size (413), a memory budget shared by
//! every body in flight (503: many large bodies at once cannot take Gust's memory), and a
//! minimum rate (408: a client dripping bytes cannot hold a connection and its buffer for
//! ever). The budget is taken as bytes arrive, never for a declared length alone, and a
//! buffered request's stays counted until its response has ended. A body streamed to a
//! function (`--request-body stream`) is held to the rate alone: it passes through, and the
//! function's timeout bounds it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use gust_executor::{
    BodyHold, IncomingBody, InvokeError, Payload, RequestBodyError, RequestId, ResponseBody,
};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Longest pause between two pieces of a body.
const BODY_IDLE: Duration = Duration::from_secs(10);
/// The rate is checked per window of this much time spent waiting for the client: an early
/// burst cannot buy a long trickle after it.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Least a body must bring in each window unless it ends first (32 KiB per second).
const MIN_WINDOW_BYTES: u64 = 32 * 1024 * RATE_WINDOW.as_secs();
/// The rules above, as the caller reads them in a 408.
const TOO_SLOW: &str = "a pause over 10s, or under 327680 bytes in 10s of waiting for it";
/// The budget's unit: permits are counted in KiB so that a budget of gigabytes fits.
const UNIT: usize = 1024;
/// Buffer allocated before a body's first bytes, whatever length it declares.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Memory for request bodies being read or waiting on their function, shared by every request
/// of the listeners it is given to, and the largest body one synchronous request may have.
#[derive(Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    request_limit: usize,
}

impl BodyBudget {
    /// `bytes` for all bodies together; each synchronous request's at most
    /// [`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES) until [`Self::with_request_limit`].
    pub fn new(bytes: usize) -> Self {
        Self {
            units: Arc::new(Semaphore::new(bytes.div_ceil(UNIT))),
            request_limit: crate::MAX_REQUEST_BYTES,
        }
    }

    /// Sets the largest body a synchronous request may have (`gust up --body-limit`).
    pub fn with_request_limit(mut self, bytes: usize) -> Self {
        self.request_limit = bytes;
        self
    }

    /// The largest body a synchronous request may have.
    pub fn request_limit(&self) -> usize {
        self.request_limit
    }

    /// A synchronous invocation's body as it arrives: the executor reads it whole (within this
    /// budget and the request limit) or streams it, as its function takes it.
    pub fn arriving(&self, headers: &HeaderMap, body: Body) -> Payload {
        Payload::Arriving(Box::new(ArrivingBody::new(
            headers,
            body,
            self.request_limit,
            self,
        )))
    }

    /// An asynchronous invocation's body, read whole here (it is stored until it runs) within
    /// [`MAX_ASYNC_REQUEST_BYTES`](crate::MAX_ASYNC_REQUEST_BYTES); when it is refused, the
    /// answer to send.
    pub async fn read_for_queue(
        &self,
        headers: &HeaderMap,
        body: Body,
        id: &RequestId,
    ) -> Result<Bytes, Response> {
        read_limited(headers, body, crate::MAX_ASYNC_REQUEST_BYTES, self)
            .await
            .map(|(bytes, _reserved)| bytes)
            .map_err(|error| {
                crate::invoke_error_response(&InvokeError::RequestBody(error), id.as_str())
            })
    }
}

/// The part of the budget one body holds; returned when dropped.
pub struct Reserved {
    budget: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reserved {
    /// Grows the reservation to cover `bytes`, or fails at once when the budget has no room.
    fn cover(&mut self, bytes: usize) -> Result<(), RequestBodyError> {
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let needed = bytes.div_ceil(UNIT);
        if needed <= held {
            return Ok(());
        }
        let more = u32::try_from(needed - held).map_err(|_| RequestBodyError::OverBudget)?;
        let extra = self
            .budget
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| RequestBodyError::OverBudget)?;
        match &mut self.permit {
            Some(permit) => permit.merge(extra),
            None => self.permit = Some(extra),
        }
        Ok(())
    }
}

/// Reads a request body up to `limit` bytes. A larger declared length is refused before
/// anything is read, and a body that turns out longer as soon as it passes the limit. The
/// returned reservation keeps the body's memory counted against `budget` while it is held.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Reserved), RequestBodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RequestBodyError::TooLarge { limit });
    }
    let mut reserved = Reserved {
        budget: budget.units.clone(),
        permit: None,
    };
    // Memory is taken as bytes arrive: a declared length alone holds nothing.
    let declared = declared.map_or(0, |len| len as usize);
    let mut buffer = BytesMut::with_capacity(declared.min(INITIAL_CAPACITY));
    let mut body = Paced::new(body);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if buffer.len() + data.len() > limit {
            return Err(RequestBodyError::TooLarge { limit });
        }
        reserved.cover(buffer.len() + data.len())?;
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), reserved))
}

/// A function's response as the connection sends it: chunks pass on as the function writes
/// them, so the listener holds at most what the connection buffers, whatever the response's
/// size. A response that breaks part-way (its function failed or ran out of time after its
/// status was sent) ends the connection, which is how HTTP/1.1 tells a client a response is
/// incomplete; the reason goes to the log under the request's id.
pub fn streamed_response(body: ResponseBody, id: &RequestId) -> Body {
    Body::new(StreamedResponse {
        inner: body,
        id: id.clone(),
    })
}

struct StreamedResponse {
    inner: ResponseBody,
    id: RequestId,
}

impl hyper::body::Body for StreamedResponse {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(err))) = &polled {
            tracing::warn!(request_id = %self.id, reason = err.reason(), error = %err, "response ended part-way");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A caller's body as a listener lets it in: read whole within `limit` and the budget, or
/// streamed at the listener's pace, as the function it goes to takes it.
struct ArrivingBody {
    headers: HeaderMap,
    body: Body,
    limit: usize,
    budget: BodyBudget,
}

impl ArrivingBody {
    /// Only the body's framing headers are kept from `headers`.
    fn new(headers: &HeaderMap, body: Body, limit: usize, budget: &BodyBudget) -> Self {
        let mut framing = HeaderMap::new();
        if let Some(length) = headers.get(header::CONTENT_LENGTH) {
            framing.insert(header::CONTENT_LENGTH, length.clone());
        }
        Self {
            headers: framing,
            body,
            limit,
            budget: budget.clone(),
        }
    }
}

#[async_trait]
impl IncomingBody for ArrivingBody {
    async fn read_whole(self: Box<Self>) -> Result<(Bytes, BodyHold), RequestBodyError> {
        let (bytes, reserved) =
            read_limited(&self.headers, self.body, self.limit, &self.budget).await?;
        Ok((bytes, Box::new(reserved)))
    }

    fn stream(self: Box<Self>) -> UnsyncBoxBody<Bytes, RequestBodyError> {
        Paced::new(self.body).boxed_unsync()
    }
}

/// A body held to the minimum rate. Only time spent waiting for the client counts: while
/// its reader is not asking for more (a function not reading a streamed body, once the
/// buffers between are full), the client is not to blame.
struct Paced {
    inner: Body,
    /// Since when the reader has been waiting for the client's next piece.
    waiting_since: Option<Instant>,
    /// Waiting time in the current rate window, before the current wait.
    window_waited: Duration,
    /// Bytes received in the current rate window.
    window_bytes: u64,
    idle: Pin<Box<Sleep>>,
}

impl Paced {
    fn new(inner: Body) -> Self {
        Self {
            inner,
            waiting_since: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
            idle: Box::pin(tokio::time::sleep(BODY_IDLE)),
        }
    }

    /// Counts a piece that arrived; refuses the body when a window of waiting brought too
    /// little.
    fn arrived(&mut self, bytes: usize) -> Result<(), RequestBodyError> {
        if let Some(since) = self.waiting_since.take() {
            self.window_waited += since.elapsed();
        }
        self.window_bytes += bytes as u64;
        if self.window_waited >= RATE_WINDOW {
            if self.window_bytes < MIN_WINDOW_BYTES {
                return Err(RequestBodyError::TooSlow(TOO_SLOW));
            }
            self.window_waited = Duration::ZERO;
            self.window_bytes = 0;
        }
        Ok(())
    }
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                Poll::Ready(Some(this.arrived(bytes).map(|()| frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(RequestBodyError::Unreadable))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    this.idle.as_mut().reset(now + BODY_IDLE);
                }
                match this.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(RequestBodyError::TooSlow(TOO_SLOW)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn declaring(len: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers
    }

    #[tokio::test]
    async fn a_declared_length_alone_takes_nothing_and_a_body_holds_its_share_until_dropped() {
        let budget = BodyBudget::new(10 * UNIT);
        // Declares 8 KiB, sends 1: only what arrived is taken.
        let (_small, held) = read_limited(
            &declaring(8 * UNIT),
            Body::from(vec![1u8; UNIT]),
            1 << 20,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(budget.units.available_permits(), 9);
        drop(held);
        assert_eq!(
            budget.units.available_permits(),
            10,
            "given back once dropped"
        );
    }

    #[tokio::test]
    async fn bodies_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(10 * UNIT);
        let (first, held) = read_limited(
            &declaring(6 * UNIT),
            Body::from(vec![1u8; 6 * UNIT]),
            1 << 20,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(first.len(), 6 * UNIT);
        let refused = read_limited(
            &declaring(6 * UNIT),
            Body::from(vec![1u8; 6 * UNIT]),
            1 << 20,
            &budget,
        )
        .await;
        assert!(matches!(refused, Err(RequestBodyError::OverBudget)));
        // Without a declared length the reservation grows with the body and fails the same way.
        let refused = read_limited(
            &HeaderMap::new(),
            Body::from(vec![1u8; 6 * UNIT]),
            1 << 20,
            &budget,
        )
        .await;
        assert!(matches!(refused, Err(RequestBodyError::OverBudget)));
        drop(held);
        assert!(
            read_limited(
                &HeaderMap::new(),
                Body::from(vec![1u8; 6 * UNIT]),
                1 << 20,
                &budget
            )
            .await
            .is_ok()
        );
        assert_eq!(budget.units.available_permits(), 10);
    }

    /// An early burst does not buy a trickle after it: each window of waiting must bring
    /// its share.
    #[tokio::test(start_paused = true)]
    async fn a_burst_then_a_trickle_is_refused_within_two_windows() {
        let budget = BodyBudget::new(64 << 20);
        let (mut sender, channel) = http_body_util::channel::Channel::<Bytes>::new(1);
        let reading = tokio::spawn(async move {
            read_limited(&HeaderMap::new(), Body::new(channel), 64 << 20, &budget)
                .await
                .map(|(b, _)| b.len())
        });
        sender
            .send_data(Bytes::from(vec![0u8; 8 << 20]))
            .await
            .unwrap();
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(BODY_IDLE - Duration::from_secs(2)).await;
                if sender.send_data(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        assert!(matches!(
            reading.await.unwrap(),
            Err(RequestBodyError::TooSlow(_))
        ));
        assert!(
            // Under the old running average, 8 MiB would have bought over four minutes.
            started.elapsed() <= (RATE_WINDOW + BODY_IDLE) * 2,
            "{:?}",
            started.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_refused() {
        let budget = BodyBudget::new(1 << 20);
        let (mut sender, channel) = http_body_util::channel::Channel::<Bytes>::new(1);
        let body = Body::new(channel);
        let reading = tokio::spawn(async move {
            read_limited(&HeaderMap::new(), body, 1 << 20, &budget)
                .await
                .map(|(b, _)| b)
        });
        sender
            .send_data(Bytes::from_static(b"start"))
            .await
            .unwrap();
        tokio::time::sleep(BODY_IDLE * 2).await;
        assert!(matches!(
            reading.await.unwrap(),
            Err(RequestBodyError::TooSlow(_))
        ));
    }
}
