//! NATS JetStream: the topic is a subject, read through a durable pull consumer with explicit
//! acknowledgement. A stream is created for the subject (and for the response and error
//! subjects) when no stream captures it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures_util::StreamExt;
use gust_model::MqTrigger;
use tokio::sync::mpsc;

use crate::broker::{
    BrokerError, Outgoing, Publisher, Received, Session, Settle, read_ahead, window,
};

/// How long the server waits for an acknowledgement (or a progress report) before it
/// delivers a message again; messages in flight report progress more often than this.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long the server holds one pull request open when it has nothing to deliver. A request
/// the server lost (a broker restart) is given up by the client five seconds after this.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long a publish may wait for the stream's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct NatsSession {
    consumer: PullConsumer,
    /// The pull request being answered; a new one is sent when it ends.
    pull: Option<Batch>,
    /// Connection events: a disconnection ends the session (and is reported) at once.
    events: mpsc::UnboundedReceiver<async_nats::Event>,
    publisher: Arc<NatsPublisher>,
    trigger: MqTrigger,
}

struct NatsPublisher {
    context: jetstream::Context,
    trigger: MqTrigger,
}

struct NatsAck {
    message: jetstream::Message,
    trigger_name: String,
}

pub async fn connect(trigger: &MqTrigger) -> Result<Box<dyn Session>, BrokerError> {
    let fail =
        |context: &str, error: &dyn std::fmt::Display| BrokerError::new(trigger, context, error);
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        .connect(trigger.url.expose())
        .await
        .map_err(|e| fail("cannot connect to NATS", &e))?;
    let context = jetstream::new(client);
    let stream_name = ensure_stream(&context, trigger, &trigger.topic, "")
        .await
        .map_err(|e| fail("cannot find or create a stream for the topic", &e))?;
    for (topic, suffix) in [
        (&trigger.resp_topic, "-responses"),
        (&trigger.error_topic, "-errors"),
    ] {
        if let Some(topic) = topic {
            ensure_stream(&context, trigger, topic, suffix)
                .await
                .map_err(|e| fail(&format!("cannot find or create a stream for {topic:?}"), &e))?;
        }
    }
    let stream = context
        .get_stream(&stream_name)
        .await
        .map_err(|e| fail("cannot open the stream", &e))?;
    let durable = trigger.broker_identity();
    // Created, or updated when it exists: a trigger created again under the same name resumes
    // where its consumer stopped, with the settings it has now (its concurrency sets how
    // many messages may be unacknowledged).
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            filter_subject: trigger.topic.clone(),
            max_ack_pending: window(trigger.concurrency) as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| fail("cannot create the durable consumer", &e))?;
    Ok(Box::new(NatsSession {
        consumer,
        pull: None,
        events,
        publisher: Arc::new(NatsPublisher {
            context,
            trigger: trigger.clone(),
        }),
        trigger: trigger.clone(),
    }))
}

/// One pull request for a window's worth of messages. It ends when the window was delivered,
/// when the server expires it, or (a request the server lost) when the client gives up on it.
///
/// One request at a time rather than async-nats' continuous pull stream: that stream keeps
/// its own count of what overlapping requests still owe, and after Gust restarted mid-stream
/// it was seen to count requests the server no longer held, so the consumer stalled with
/// messages undelivered and no pull waiting. A request that always ends cannot drift.
async fn request_pull(
    consumer: &PullConsumer,
    trigger: &MqTrigger,
) -> Result<Batch, async_nats::Error> {
    Ok(consumer
        .batch()
        .max_messages(window(trigger.concurrency))
        .expires(PULL_EXPIRES)
        .messages()
        .await?)
}

/// The name of the stream capturing `subject`, created (`gust-<namespace>-<trigger><suffix>`)
/// when there is none.
async fn ensure_stream(
    context: &jetstream::Context,
    trigger: &MqTrigger,
    subject: &str,
    suffix: &str,
) -> Result<String, async_nats::Error> {
    match context.stream_by_subject(subject).await {
        Ok(name) => Ok(name),
        Err(err) if err.kind() == GetStreamByNameErrorKind::NotFound => {
            let name = format!("{}{suffix}", trigger.broker_identity());
            context
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.to_owned()],
                    ..Default::default()
                })
                .await?;
            Ok(name)
        }
        Err(err) => Err(err.into()),
    }
}

#[async_trait]
impl Session for NatsSession {
    async fn next(&mut self) -> Result<Received, BrokerError> {
        let message = loop {
            let pull = match &mut self.pull {
                Some(pull) => pull,
                None => self.pull.insert(
                    request_pull(&self.consumer, &self.trigger)
                        .await
                        .map_err(|e| BrokerError::new(&self.trigger, "NATS pull request", e))?,
                ),
            };
            let next = tokio::select! {
                message = pull.next() => message,
                Some(event) = self.events.recv() => {
                    if matches!(event, async_nats::Event::Disconnected | async_nats::Event::Closed) {
                        return Err(BrokerError::new(&self.trigger, "NATS connection", event));
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => break message,
                // A status the request cannot go on after (the consumer deleted, a leader
                // change): a new session starts over.
                Some(Err(err)) => {
                    self.pull = None;
                    return Err(BrokerError::new(&self.trigger, "NATS consumer", err));
                }
                None => self.pull = None,
            }
        };
        let info = message.info().map_err(|e| {
            BrokerError::new(&self.trigger, "NATS message without JetStream metadata", e)
        })?;
        let headers = message.headers.as_ref();
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        // A publisher's Nats-Msg-Id (its deduplication id) names the message; otherwise its
        // place in the stream does.
        let id = header("Nats-Msg-Id")
            .unwrap_or_else(|| format!("{}:{}", info.stream, info.stream_sequence));
        let time_ms = u64::try_from(info.published.timestamp_millis()).ok();
        Ok(Received {
            id,
            subject: message.subject.to_string(),
            time_ms,
            content_type: header("Content-Type"),
            payload: message.payload.clone(),
            settle: Box::new(NatsAck {
                message,
                trigger_name: self.trigger.name.to_string(),
            }),
        })
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    fn read_ahead(&self) -> usize {
        read_ahead(self.trigger.concurrency)
    }
}

#[async_trait]
impl Settle for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.message
            .ack()
            .await
            .map_err(|e| BrokerError(format!("NATS ack: {e}")))
    }

    async fn release(self: Box<Self>, delay: Duration) {
        if let Err(err) = self.message.ack_with(AckKind::Nak(Some(delay))).await {
            // Without the nak the server still redelivers it after the ack wait.
            tracing::debug!(trigger = %self.trigger_name, error = %err, "NATS nak failed");
        }
    }

    async fn in_progress(&self) {
        let _ = self.message.ack_with(AckKind::Progress).await;
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<(), BrokerError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &message.headers {
            headers.append(name.as_str(), value.as_str());
        }
        if let Some(content_type) = &message.content_type {
            headers.insert("Content-Type", content_type.as_str());
        }
        let publish = async {
            self.context
                .publish_with_headers(topic.to_owned(), headers, message.payload)
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(err)) => Err(BrokerError::new(&self.trigger, "NATS publish", err)),
            Err(_) => Err(BrokerError::new(
                &self.trigger,
                "NATS publish",
                "no acknowledgement from the stream",
            )),
        }
    }
}
