//! Stored requests made deliverable again (`gust_executor::store_request` stores them):
//! header values are kept as Latin-1 text (one char per byte), so every byte a caller sent
//! survives the round trip.

use bytes::Bytes;
use gust_model::StoredRequest;
use http::{HeaderName, HeaderValue};

/// The request to deliver. Gust's own headers are set last, so a stored one cannot override
/// them; a stored header that no longer parses is dropped.
pub fn delivery_request(
    stored: &StoredRequest,
    gust_headers: &[(&'static str, String)],
) -> http::Request<Bytes> {
    let mut request = http::Request::builder()
        .method(stored.method.as_str())
        .uri(stored.uri.as_str())
        .body(Bytes::from(stored.body.clone()))
        .unwrap_or_else(|_| {
            http::Request::builder()
                .method(http::Method::POST)
                .uri("/")
                .body(Bytes::from(stored.body.clone()))
                .expect("a POST to / is a valid request")
        });
    let headers = request.headers_mut();
    for (name, value) in &stored.headers {
        let bytes: Option<Vec<u8>> = value.chars().map(|c| u8::try_from(c).ok()).collect();
        if let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(name.as_bytes()),
            bytes.map(|b| HeaderValue::from_bytes(&b)),
        ) {
            headers.append(name, value);
        }
    }
    for (name, value) in gust_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use gust_executor::store_request;

    use super::*;

    #[test]
    fn every_header_byte_survives_and_gust_headers_win() {
        let mut original = http::Request::builder()
            .method("PUT")
            .uri("/a/b?x=1")
            .header("x-note", HeaderValue::from_bytes(b"caf\xe9 \x80").unwrap())
            .header("x-gust-attempt", "99")
            .body(Bytes::from_static(b"\x00\xffbody"))
            .unwrap();
        original
            .headers_mut()
            .append("x-multi", "1".parse().unwrap());
        original
            .headers_mut()
            .append("x-multi", "2".parse().unwrap());
        let stored = store_request(&original);
        let back = delivery_request(&stored, &[("x-gust-attempt", "2".into())]);
        assert_eq!(back.method(), "PUT");
        assert_eq!(back.uri(), "/a/b?x=1");
        assert_eq!(back.headers()["x-note"].as_bytes(), b"caf\xe9 \x80");
        assert_eq!(back.headers().get_all("x-multi").iter().count(), 2);
        assert_eq!(back.headers()["x-gust-attempt"], "2");
        assert_eq!(back.body().as_ref(), b"\x00\xffbody");
    }
}
