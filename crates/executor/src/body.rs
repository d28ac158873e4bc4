//! A function's response body: a stream of chunks from the instance to whoever invoked it, so
//! that a function can stream (server-sent events, a model's tokens, a large download) and the
//! first byte leaves as soon as the function writes it. A body fails with an [`InvokeError`]
//! when its instance breaks or its time runs out part-way; a consumer that needs the whole
//! body in memory reads it with [`read_response`] and a limit.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::InvokeError;

/// The body of a function's response.
pub type ResponseBody = UnsyncBoxBody<Bytes, InvokeError>;

/// A body that is all there already.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No bytes, of a length not known in advance: the answer to HEAD for a response that would
/// stream, so that the listener does not announce `content-length: 0` for it.
pub fn empty_of_unknown_length() -> ResponseBody {
    struct UnknownLength;
    impl Body for UnknownLength {
        type Data = Bytes;
        type Error = InvokeError;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, InvokeError>>> {
            std::task::Poll::Ready(None)
        }
        // The defaults on purpose: not known to be at its end, no exact size.
    }
    UnknownLength.boxed_unsync()
}

/// Any body whose errors say what broke.
pub fn stream<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes, Error = InvokeError> + Send + 'static,
{
    body.boxed_unsync()
}

/// Reads a whole response into memory, refusing more than `limit` bytes: for consumers that
/// keep or forward the body as one message (a queue's response topic, an async result).
pub async fn read_response(
    response: http::Response<ResponseBody>,
    function: &str,
    limit: usize,
) -> Result<http::Response<Bytes>, InvokeError> {
    let (parts, mut body) = response.into_parts();
    let too_large = || InvokeError::ResponseTooLarge {
        function: function.to_owned(),
        limit,
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(too_large());
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(http::Response::from_parts(parts, buffer.freeze()))
}

/// Reads a whole response, keeping at most its first `keep` bytes: for consumers that record
/// a response but need the function to finish it (an async invocation's result). The rest is
/// read and dropped, so the function is billed and its instance freed as for any caller.
pub async fn read_prefix(
    response: http::Response<ResponseBody>,
    keep: usize,
) -> Result<http::Response<Bytes>, InvokeError> {
    let (parts, mut body) = response.into_parts();
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = keep.saturating_sub(buffer.len());
            buffer.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(http::Response::from_parts(parts, buffer.freeze()))
}
