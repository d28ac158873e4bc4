//! What each broker kind provides: a session that yields messages, a way to settle each
//! message (acknowledge it, or leave it for redelivery) and a publisher for the response and
//! error topics. Everything else (invoking, retrying, dead-lettering) is shared.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::MqTrigger;

/// A broker failure, already scrubbed of credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BrokerError(pub String);

impl BrokerError {
    /// A session ended on purpose so that the broker redelivers a released message (MQTT
    /// resends unacknowledged messages only to a new connection): not a failure to report.
    pub fn redelivery() -> Self {
        Self(REDELIVERY.to_owned())
    }

    pub fn is_redelivery(&self) -> bool {
        self.0 == REDELIVERY
    }

    /// `context: error`, with the trigger URL's secret removed from the error's text.
    pub fn new(trigger: &MqTrigger, context: &str, error: impl std::fmt::Display) -> Self {
        Self(trigger.url.scrub(&format!("{context}: {error}")))
    }
}

const REDELIVERY: &str = "reconnecting so that the broker redelivers a released message";

/// One message as received.
pub struct Received {
    /// The transport's stable id: the same on every redelivery (the CloudEvents `id`).
    pub id: String,
    /// The topic, subject, queue or stream it came from (the CloudEvents `subject`).
    pub subject: String,
    /// When the broker stored it, if the transport says.
    pub time_ms: Option<u64>,
    /// The content type the publisher set, if the transport carries one.
    pub content_type: Option<String>,
    pub payload: Bytes,
    pub settle: Box<dyn Settle>,
}

/// How a message leaves the trigger.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Acknowledges the message: the broker forgets it. Called only after the function
    /// succeeded, or after its failure was written to the error topic or dead-letter store.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Leaves the message unacknowledged so that the broker delivers it again, not sooner
    /// than `delay` where the transport allows.
    async fn release(self: Box<Self>, delay: Duration);
    /// Called every [`crate::PROGRESS_EVERY`] while the message is being worked on, so the
    /// broker does not hand it to another consumer meanwhile.
    async fn in_progress(&self) {}
}

/// A message Gust writes: a function's response, or a failed message to the error topic.
pub struct Outgoing {
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub payload: Bytes,
}

#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes and returns once the broker has taken the message (stored or confirmed); an
    /// error means it may not have.
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<(), BrokerError>;
}

/// A live connection consuming one trigger's topic.
#[async_trait]
pub trait Session: Send {
    /// The next message. An error means the connection is lost: the trigger reconnects.
    async fn next(&mut self) -> Result<Received, BrokerError>;
    fn publisher(&self) -> std::sync::Arc<dyn Publisher>;
    /// Messages the broker may send beyond the trigger's concurrency, to wait in Gust for a
    /// worker. None unless a kind says so (NATS and MQTT: [`window`]); AMQP's prefetch and the
    /// Redis read count are the concurrency.
    fn read_ahead(&self) -> usize {
        0
    }
}

/// Connects to a trigger's broker and sets up what it consumes from (stream and durable
/// consumer, subscription, queue, consumer group); `member` is this node's id in a cluster.
pub async fn connect(
    trigger: &MqTrigger,
    member: Option<&str>,
) -> Result<Box<dyn Session>, BrokerError> {
    use gust_model::MqKind;
    match trigger.kind {
        MqKind::Nats => crate::nats::connect(trigger).await,
        MqKind::Mqtt => crate::mqtt::connect(trigger, member).await,
        MqKind::Amqp => crate::amqp::connect(trigger).await,
        MqKind::Redis => crate::redis::connect(trigger, member).await,
    }
}

/// A stable id for a message whose transport has none: a digest of where it came from and
/// what it holds (identical messages on one topic share it).
pub fn content_id(subject: &str, payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(subject.as_bytes());
    digest.update([0]);
    digest.update(payload);
    hex::encode(&digest.finalize()[..16])
}

/// The parts of a `scheme://[user[:password]@]host[:port][/...]` URL a client without its
/// own URL parser needs.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl Endpoint {
    pub fn parse(trigger: &MqTrigger, default_port: u16) -> Result<Self, BrokerError> {
        let url = trigger.url.expose();
        let bad =
            |why: &str| BrokerError(format!("bad broker URL {}: {why}", trigger.url.redacted()));
        let (_, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_owned(), password.to_owned())), host_port)
            }
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (host_port, default_port),
        };
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            credentials,
        })
    }
}

/// Messages a trigger may hold beyond its workers, at most: they wait in memory, so at the
/// highest concurrency (256) a trigger holds 512 messages rather than the 1,024 that four times
/// would give.
const MAX_WAITING: usize = 256;

/// How many messages a NATS or MQTT trigger lets its broker send unacknowledged: the
/// concurrency, and three times as many again above 1 (at most [`MAX_WAITING`] more), so that a
/// worker that finishes finds the next message already here. An acknowledgement reaches the
/// broker, and the next message Gust, only when their tasks get a turn on a runtime busy running
/// functions: measured at concurrency 32 with a no-op function, a NATS window of twice the
/// concurrency left 28 of the 32 workers idle on average when a message arrived and the
/// throughput at 0.65–0.87 of a minimal consumer's, four times left about half idle and gave
/// 0.76–0.92; an MQTT window of exactly the concurrency gave 0.60–0.61 in three rounds, four
/// times 0.83–0.93 (the minimal consumer given the same receive maximum). Messages waiting for
/// a worker report progress like those being worked on, so they do not outlive the ack wait.
/// At concurrency 1 nothing waits, so the order of messages is kept.
pub fn window(concurrency: u32) -> usize {
    let concurrency = concurrency as usize;
    if concurrency > 1 {
        concurrency + (3 * concurrency).min(MAX_WAITING)
    } else {
        1
    }
}

/// The messages of a [`window`] that wait for a worker: what a NATS or MQTT session reports
/// as its [`Session::read_ahead`].
pub(crate) fn read_ahead(concurrency: u32) -> usize {
    window(concurrency) - concurrency as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_order_at_one_and_caps_what_waits() {
        assert_eq!(window(1), 1);
        assert_eq!(window(2), 8);
        assert_eq!(window(32), 128);
        assert_eq!(window(gust_model::MAX_CONCURRENCY), 512);
    }
}
