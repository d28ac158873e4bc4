//! AMQP 0.9.1 (RabbitMQ): the topic is a durable queue (declared, as a quorum queue, when
//! missing), consumed with
//! manual acknowledgements and a prefetch of `--concurrency`. Responses and failures are
//! published through the default exchange to the queues named by the response and error
//! topics, persistent, mandatory and with publisher confirms: a message the broker could not
//! route or store is an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use gust_model::MqTrigger;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

use crate::broker::{BrokerError, Outgoing, Publisher, Received, Session, Settle, content_id};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;

struct AmqpSession {
    /// Kept so the connection lives as long as the session.
    _connection: Connection,
    consumer: Consumer,
    publisher: Arc<AmqpPublisher>,
    trigger: MqTrigger,
}

struct AmqpPublisher {
    channel: Channel,
    trigger: MqTrigger,
}

struct AmqpAck {
    delivery: Delivery,
}

pub async fn connect(trigger: &MqTrigger) -> Result<Box<dyn Session>, BrokerError> {
    let fail =
        |context: &str, error: &dyn std::fmt::Display| BrokerError::new(trigger, context, error);
    let connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(trigger.url.expose(), ConnectionProperties::default()),
    )
    .await
    .map_err(|_| fail("cannot connect to the AMQP broker", &"no answer"))?
    .map_err(|e| fail("cannot connect to the AMQP broker", &e))?;
    for queue in std::iter::once(&trigger.topic)
        .chain(trigger.resp_topic.as_ref())
        .chain(trigger.error_topic.as_ref())
    {
        ensure_queue(&connection, queue)
            .await
            .map_err(|e| fail(&format!("cannot declare the queue {queue:?}"), &e))?;
    }
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| fail("cannot open a channel", &e))?;
    let prefetch = u16::try_from(trigger.concurrency).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| fail("cannot set the prefetch", &e))?;
    let consumer = channel
        .basic_consume(
            ShortString::from(trigger.topic.as_str()),
            ShortString::from(trigger.broker_identity()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("cannot consume from the queue", &e))?;
    let publish_channel = connection
        .create_channel()
        .await
        .map_err(|e| fail("cannot open a channel", &e))?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| fail("cannot enable publisher confirms", &e))?;
    Ok(Box::new(AmqpSession {
        _connection: connection,
        consumer,
        publisher: Arc::new(AmqpPublisher {
            channel: publish_channel,
            trigger: trigger.clone(),
        }),
        trigger: trigger.clone(),
    }))
}

/// Declares `queue` as a durable quorum queue unless it exists (whatever its type and
/// arguments: a queue declared by someone else is used as it is). Quorum queues, because a
/// classic queue killed with SIGKILL lost persistent messages whose publishes RabbitMQ 3.10 had
/// confirmed (seen in the broker-restart test).
async fn ensure_queue(connection: &Connection, queue: &str) -> Result<(), lapin::Error> {
    // A failed passive declare closes its channel, hence a channel of its own.
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "done".into()).await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

#[async_trait]
impl Session for AmqpSession {
    async fn next(&mut self) -> Result<Received, BrokerError> {
        let delivery = match self.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => return Err(BrokerError::new(&self.trigger, "AMQP consumer", err)),
            None => return Err(BrokerError("AMQP consumer: the connection ended".into())),
        };
        let properties = &delivery.properties;
        let payload = Bytes::from(delivery.data.clone());
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| content_id(&self.trigger.topic, &payload));
        Ok(Received {
            id,
            subject: self.trigger.topic.clone(),
            time_ms: properties
                .timestamp()
                .map(|seconds| seconds.saturating_mul(1000)),
            content_type: properties
                .content_type()
                .as_ref()
                .map(|ct| ct.as_str().to_owned()),
            payload,
            settle: Box::new(AmqpAck { delivery }),
        })
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }
}

#[async_trait]
impl Settle for AmqpAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.delivery
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError(format!("AMQP ack: {e}")))
    }

    async fn release(self: Box<Self>, delay: Duration) {
        // A nack requeues it at once; waiting first keeps a failing write from spinning.
        tokio::time::sleep(delay).await;
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(err) = self.delivery.nack(requeue).await {
            tracing::debug!(error = %err, "AMQP nack failed; the broker requeues the message when the channel closes");
        }
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        for (name, value) in message.headers {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        let mut properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(PERSISTENT);
        if let Some(content_type) = message.content_type {
            properties = properties.with_content_type(ShortString::from(content_type));
        }
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let publish = async {
            self.channel
                .basic_publish(
                    "".into(),
                    ShortString::from(topic),
                    mandatory,
                    &message.payload,
                    properties,
                )
                .await?
                .await
        };
        let fail =
            |error: &dyn std::fmt::Display| BrokerError::new(&self.trigger, "AMQP publish", error);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Err(_) => Err(fail(&"no confirmation from the broker")),
            Ok(Err(err)) => Err(fail(&err)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(fail(&format!(
                "the broker could not route it to a queue named {topic:?} ({})",
                returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(fail(&"the broker refused it (nack)")),
            Ok(Ok(Confirmation::NotRequested)) => Err(fail(&"publisher confirms are off")),
        }
    }
}
