//! MQTT 5: the topic is a topic filter subscribed at QoS 1 in a persistent session (clean
//! start off, a session that outlives the connection, a client id stable per trigger), so
//! messages published while Gust is away wait at the broker. Messages are acknowledged by
//! hand (PUBACK) once settled; one left unacknowledged is redelivered by the broker when the
//! session resumes, so releasing a message means reconnecting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gust_model::MqTrigger;
use rumqttc::Outgoing as MqttOutgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BrokerError, Endpoint, Outgoing, Publisher, Received, Session, Settle, content_id, read_ahead,
    window,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker keeps the session (and its queued messages) while Gust is away.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

type PublishResult = Result<(), String>;

/// Publishes waiting for their packet id (in request order), then for their PUBACK.
#[derive(Default)]
struct PendingPublishes {
    unsent: VecDeque<oneshot::Sender<PublishResult>>,
    sent: HashMap<u16, oneshot::Sender<PublishResult>>,
}

impl PendingPublishes {
    fn fail_all(&mut self, error: &str) {
        for waiter in self
            .unsent
            .drain(..)
            .chain(self.sent.drain().map(|(_, w)| w))
        {
            let _ = waiter.send(Err(error.to_owned()));
        }
    }
}

struct MqttSession {
    received: mpsc::UnboundedReceiver<Result<Received, BrokerError>>,
    publisher: Arc<MqttPublisher>,
    driver: tokio::task::JoinHandle<()>,
    concurrency: u32,
}

impl Drop for MqttSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct MqttPublisher {
    client: AsyncClient,
    pending: Arc<std::sync::Mutex<PendingPublishes>>,
    /// Serialises "queue a waiter, send the request" so waiters stay in request order.
    order: tokio::sync::Mutex<()>,
    trigger: MqTrigger,
}

struct MqttAck {
    client: AsyncClient,
    publish: Publish,
    /// Ends the session, so that the broker redelivers what was not acknowledged.
    reconnect: CancellationToken,
}

/// How many QoS 1 messages the broker may send unacknowledged: the trigger's [`window`], and
/// at least 64 (at concurrency 1 Gust still takes one at a time, which keeps the order).
pub fn receive_maximum(concurrency: u32) -> u16 {
    u16::try_from(window(concurrency).max(64)).unwrap_or(u16::MAX)
}

/// In a cluster each node has a session of its own, and the subscription is shared
/// (`$share/<trigger>/<topic>`): the broker gives each message to one of the nodes.
pub async fn connect(
    trigger: &MqTrigger,
    member: Option<&str>,
) -> Result<Box<dyn Session>, BrokerError> {
    let endpoint = Endpoint::parse(trigger, 1883)?;
    let (client_id, filter) = match member {
        None => (trigger.broker_identity(), trigger.topic.clone()),
        Some(node) => (
            format!("{}-{node}", trigger.broker_identity()),
            format!("$share/{}/{}", trigger.broker_identity(), trigger.topic),
        ),
    };
    let mut options = MqttOptions::new(client_id, endpoint.host, endpoint.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(10))
        .set_connection_timeout(CONNECT_TIMEOUT.as_secs())
        .set_receive_maximum(Some(receive_maximum(trigger.concurrency)));
    if let Some((user, password)) = endpoint.credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let fail =
        |context: &str, error: &dyn std::fmt::Display| BrokerError::new(trigger, context, error);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| fail("cannot subscribe", &e))?;
    let (received_tx, received) = mpsc::unbounded_channel();
    let reconnect = CancellationToken::new();
    // Wait for the broker to accept the connection and the subscription; publishes that
    // arrive meanwhile (a resumed session's backlog) are passed on.
    let handshake = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code != ConnectReturnCode::Success =>
                {
                    return Err(fail(
                        "the broker refused the connection",
                        &format!("{:?}", ack.code),
                    ));
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        code => Err(fail(
                            "the broker refused the subscription",
                            &format!("{code:?}"),
                        )),
                    };
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = received_tx.send(Ok(received_message(&client, publish, &reconnect)));
                }
                Ok(_) => {}
                Err(err) => return Err(fail("cannot connect to the MQTT broker", &err)),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| fail("cannot connect to the MQTT broker", &"no answer"))??;
    let pending = Arc::new(std::sync::Mutex::new(PendingPublishes::default()));
    let driver = tokio::spawn(drive(
        trigger.clone(),
        client.clone(),
        eventloop,
        received_tx,
        pending.clone(),
        reconnect,
    ));
    Ok(Box::new(MqttSession {
        received,
        publisher: Arc::new(MqttPublisher {
            client,
            pending,
            order: tokio::sync::Mutex::new(()),
            trigger: trigger.clone(),
        }),
        driver,
        concurrency: trigger.concurrency,
    }))
}

/// Polls the connection: passes messages on, matches PUBACKs to publishes, and ends the
/// session on the first connection error or when a released message needs redelivery.
async fn drive(
    trigger: MqTrigger,
    client: AsyncClient,
    mut eventloop: EventLoop,
    received: mpsc::UnboundedSender<Result<Received, BrokerError>>,
    pending: Arc<std::sync::Mutex<PendingPublishes>>,
    reconnect: CancellationToken,
) {
    let lock = || pending.lock().unwrap_or_else(|p| p.into_inner());
    let error = loop {
        let event = tokio::select! {
            _ = reconnect.cancelled() => break BrokerError::redelivery(),
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = received.send(Ok(received_message(&client, publish, &reconnect)));
            }
            Ok(Event::Outgoing(MqttOutgoing::Publish(pkid))) => {
                let mut pending = lock();
                if let Some(waiter) = pending.unsent.pop_front() {
                    pending.sent.insert(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = lock().sent.remove(&ack.pkid) {
                    let result = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        reason => Err(format!("the broker refused the message: {reason:?}")),
                    };
                    let _ = waiter.send(result);
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                break BrokerError(format!(
                    "the broker disconnected: {:?}",
                    disconnect.reason_code
                ));
            }
            Ok(_) => {}
            Err(err) => break BrokerError::new(&trigger, "MQTT connection", err),
        }
    };
    lock().fail_all(&error.0);
    let _ = received.send(Err(error));
    let _ = client.try_disconnect();
}

fn received_message(
    client: &AsyncClient,
    publish: Publish,
    reconnect: &CancellationToken,
) -> Received {
    let subject = String::from_utf8_lossy(&publish.topic).into_owned();
    let properties = publish.properties.as_ref();
    let user_property = |name: &str| {
        properties.and_then(|p| {
            p.user_properties
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
    };
    // MQTT has no message id: a CloudEvent published in binary mode carries its own `id`;
    // anything else is named by its content.
    let id = user_property("specversion")
        .and(user_property("id"))
        .unwrap_or_else(|| content_id(&subject, &publish.payload));
    Received {
        id,
        subject,
        time_ms: None,
        content_type: properties.and_then(|p| p.content_type.clone()),
        payload: publish.payload.clone(),
        settle: Box::new(MqttAck {
            client: client.clone(),
            publish,
            reconnect: reconnect.clone(),
        }),
    }
}

#[async_trait]
impl Session for MqttSession {
    async fn next(&mut self) -> Result<Received, BrokerError> {
        match self.received.recv().await {
            Some(message) => message,
            None => Err(BrokerError("MQTT connection ended".into())),
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    fn read_ahead(&self) -> usize {
        read_ahead(self.concurrency)
    }
}

#[async_trait]
impl Settle for MqttAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.client
            .ack(&self.publish)
            .await
            .map_err(|e| BrokerError(format!("MQTT ack: {e}")))
    }

    async fn release(self: Box<Self>, _delay: Duration) {
        self.reconnect.cancel();
    }
}

#[async_trait]
impl Publisher for MqttPublisher {
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<(), BrokerError> {
        let properties = PublishProperties {
            user_properties: message.headers,
            content_type: message.content_type,
            ..Default::default()
        };
        let (done, acked) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unsent
                .push_back(done);
            if let Err(err) = self
                .client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    message.payload,
                    properties,
                )
                .await
            {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unsent
                    .pop_back();
                return Err(BrokerError::new(&self.trigger, "MQTT publish", err));
            }
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, acked).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(BrokerError::new(&self.trigger, "MQTT publish", err)),
            Ok(Err(_)) => Err(BrokerError("MQTT publish: the connection ended".into())),
            Err(_) => Err(BrokerError(
                "MQTT publish: no PUBACK from the broker".into(),
            )),
        }
    }
}
