//! A message as a CloudEvent in HTTP binary mode: its attributes as `ce-*` headers.
//!
//! Attribute values come from brokers (an MQTT user property `id`, an AMQP `message_id`, a
//! topic name) and may hold any character. As the CloudEvents HTTP binding asks, each value is
//! percent-encoded where it holds a space, `"`, `%`, or anything outside printable ASCII, so
//! that every attribute reaches the function and none can break the request.

use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What the binding encodes besides every non-ASCII byte.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

// Header names built once: parsing them for every message showed in profiles.
const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
const CE_SUBJECT: HeaderName = HeaderName::from_static("ce-subject");

/// One message's CloudEvents attributes.
#[derive(Debug, Clone, Copy)]
pub struct EventAttributes<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub time_ms: u64,
    pub subject: &'a str,
    /// The message's content type, if the broker gave one; left out when it is not a valid
    /// header value.
    pub content_type: Option<&'a str>,
}

/// The attributes as headers: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`,
/// `ce-subject` always, and `content-type` when there is a valid one.
pub fn event_headers(event: &EventAttributes<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let time = chrono::DateTime::from_timestamp_millis(i64::try_from(event.time_ms).unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut headers = vec![
        (CE_SPECVERSION, HeaderValue::from_static("1.0")),
        (CE_ID, encoded(event.id)),
        (CE_SOURCE, encoded(event.source)),
        (CE_TYPE, encoded(event.event_type)),
        (CE_TIME, encoded(&time)),
        (CE_SUBJECT, encoded(event.subject)),
    ];
    if let Some(content_type) = event
        .content_type
        .and_then(|value| HeaderValue::from_str(value).ok())
    {
        headers.push((http::header::CONTENT_TYPE, content_type));
    }
    headers
}

fn encoded(value: &str) -> HeaderValue {
    HeaderValue::from_str(&utf8_percent_encode(value, ENCODED).to_string())
        .expect("percent-encoded text is printable ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_a_header_cannot_hold_are_percent_encoded_not_dropped() {
        let headers = event_headers(&EventAttributes {
            id: "a b\n\"c\"%é",
            source: "gust:default/mqt/t",
            event_type: "dev.gust.mqt.mqtt",
            time_ms: 0,
            subject: "sensors/\u{0}x",
            content_type: Some("text/plain\r\nx-injected: 1"),
        });
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(value("ce-id").unwrap(), "a%20b%0A%22c%22%25%C3%A9");
        assert_eq!(value("ce-subject").unwrap(), "sensors/%00x");
        assert_eq!(value("ce-time").unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(value("content-type"), None);
    }
}
