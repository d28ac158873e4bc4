//! Redis Streams: the topic is a stream key read through a consumer group (created, with the
//! stream, when missing). An entry is acknowledged with XACK once settled. Entries left
//! unacknowledged (released, or held by a consumer that died) are claimed again with
//! XAUTOCLAIM once idle for [`RECLAIM_IDLE`]; at start the consumer first re-reads its own
//! pending entries. The body is the entry's `data` field when it has one, else the JSON of
//! all its fields.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::MqTrigger;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};

use crate::broker::{BrokerError, Outgoing, Publisher, Received, Session, Settle};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// An unacknowledged entry idle this long is delivered again (its consumer died, or its
/// outcome could not be recorded); entries in flight report progress more often.
const RECLAIM_IDLE: Duration = Duration::from_secs(10);
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

struct RedisSession {
    trigger: Arc<MqTrigger>,
    group: String,
    consumer: String,
    /// Blocking reads only (a blocked read holds its connection).
    reader: MultiplexedConnection,
    /// Acknowledgements, claims and publishes.
    writer: MultiplexedConnection,
    buffered: VecDeque<StreamId>,
    /// Where the re-read of this consumer's own pending entries stands; `None` once done.
    own_pending_from: Option<String>,
    next_reclaim: Instant,
}

struct RedisAck {
    trigger: Arc<MqTrigger>,
    group: String,
    consumer: String,
    id: String,
    writer: MultiplexedConnection,
}

struct RedisPublisher {
    trigger: Arc<MqTrigger>,
    writer: MultiplexedConnection,
}

/// In a cluster each node is a consumer of its own (`<group>-<node>`) in the trigger's group;
/// entries a dead node held are claimed by the others once idle.
pub async fn connect(
    trigger: &MqTrigger,
    member: Option<&str>,
) -> Result<Box<dyn Session>, BrokerError> {
    let fail =
        |context: &str, error: &dyn std::fmt::Display| BrokerError::new(trigger, context, error);
    let client =
        redis::Client::open(trigger.url.expose()).map_err(|e| fail("bad Redis URL", &e))?;
    let config = |timeout| {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout))
    };
    let reader = client
        .get_multiplexed_async_connection_with_config(&config(BLOCK + COMMAND_TIMEOUT))
        .await
        .map_err(|e| fail("cannot connect to Redis", &e))?;
    let mut writer = client
        .get_multiplexed_async_connection_with_config(&config(COMMAND_TIMEOUT))
        .await
        .map_err(|e| fail("cannot connect to Redis", &e))?;
    let group = trigger.broker_identity();
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&trigger.topic)
        .arg(&group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut writer)
        .await;
    match created {
        Ok(()) => {}
        Err(err) if err.code() == Some("BUSYGROUP") => {}
        Err(err) => return Err(fail("cannot create the consumer group", &err)),
    }
    Ok(Box::new(RedisSession {
        trigger: Arc::new(trigger.clone()),
        consumer: match member {
            None => group.clone(),
            Some(node) => format!("{group}-{node}"),
        },
        group,
        reader,
        writer,
        buffered: VecDeque::new(),
        own_pending_from: Some("0".into()),
        next_reclaim: Instant::now() + RECLAIM_EVERY,
    }))
}

impl RedisSession {
    fn fail(&self, context: &str, error: impl std::fmt::Display) -> BrokerError {
        BrokerError::new(&self.trigger, context, error)
    }

    /// Fills the buffer: this consumer's own pending entries first (after a restart), idle
    /// entries of any consumer now and then, otherwise new entries.
    async fn fill(&mut self) -> Result<(), BrokerError> {
        // One at a time: an entry read ahead would sit idle in the buffer and could be
        // reclaimed while it waits.
        let count = 1;
        if let Some(from) = self.own_pending_from.clone() {
            let reply = self.read_group(&from, count, None).await?;
            match reply.last() {
                Some(last) => self.own_pending_from = Some(last.id.clone()),
                None => self.own_pending_from = None,
            }
            self.buffered.extend(reply);
            return Ok(());
        }
        if Instant::now() >= self.next_reclaim {
            self.next_reclaim = Instant::now() + RECLAIM_EVERY;
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.trigger.topic)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(RECLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.writer)
                .await
                .map_err(|e| self.fail("Redis XAUTOCLAIM", e))?;
            if !reply.claimed.is_empty() {
                self.buffered.extend(reply.claimed);
                return Ok(());
            }
        }
        let reply = self.read_group(">", count, Some(BLOCK)).await?;
        self.buffered.extend(reply);
        Ok(())
    }

    async fn read_group(
        &mut self,
        from: &str,
        count: u32,
        block: Option<Duration>,
    ) -> Result<Vec<StreamId>, BrokerError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&self.trigger.topic).arg(from);
        let reply: Option<StreamReadReply> = command
            .query_async(&mut self.reader)
            .await
            .map_err(|e| self.fail("Redis XREADGROUP", e))?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Session for RedisSession {
    async fn next(&mut self) -> Result<Received, BrokerError> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                // A pending entry deleted from the stream (XDEL, trimming) comes back empty:
                // nothing to deliver, so it is only acknowledged.
                if entry.map.is_empty() {
                    let ack = self.settle(entry.id);
                    Box::new(ack).ack().await?;
                    continue;
                }
                return Ok(self.received(entry));
            }
            self.fill().await?;
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(RedisPublisher {
            trigger: self.trigger.clone(),
            writer: self.writer.clone(),
        })
    }
}

impl RedisSession {
    fn settle(&self, id: String) -> RedisAck {
        RedisAck {
            trigger: self.trigger.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            id,
            writer: self.writer.clone(),
        }
    }

    fn received(&self, entry: StreamId) -> Received {
        let text = |value: &Value| match value {
            Value::BulkString(bytes) => Some(bytes.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            _ => None,
        };
        let payload = match entry.map.get("data").and_then(text) {
            Some(data) => Bytes::from(data),
            None => {
                let fields: serde_json::Map<String, serde_json::Value> = entry
                    .map
                    .iter()
                    .map(|(k, v)| {
                        let value = text(v).map(|b| String::from_utf8_lossy(&b).into_owned());
                        (
                            k.clone(),
                            value.map_or(serde_json::Value::Null, serde_json::Value::String),
                        )
                    })
                    .collect();
                Bytes::from(serde_json::to_vec(&fields).unwrap_or_default())
            }
        };
        let content_type = entry
            .map
            .get("content-type")
            .and_then(text)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let time_ms = entry.id.split('-').next().and_then(|ms| ms.parse().ok());
        Received {
            subject: self.trigger.topic.clone(),
            time_ms,
            content_type,
            payload,
            settle: Box::new(self.settle(entry.id.clone())),
            id: entry.id,
        }
    }
}

#[async_trait]
impl Settle for RedisAck {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        let _: i64 = redis::cmd("XACK")
            .arg(&self.trigger.topic)
            .arg(&self.group)
            .arg(&self.id)
            .query_async(&mut self.writer)
            .await
            .map_err(|e| BrokerError::new(&self.trigger, "Redis XACK", e))?;
        Ok(())
    }

    /// Left pending: claimed again once idle for [`RECLAIM_IDLE`].
    async fn release(self: Box<Self>, _delay: Duration) {}

    async fn in_progress(&self) {
        // Claiming it for itself resets the entry's idle time.
        let _: redis::RedisResult<Value> = redis::cmd("XCLAIM")
            .arg(&self.trigger.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("JUSTID")
            .query_async(&mut self.writer.clone())
            .await;
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<(), BrokerError> {
        let mut command = redis::cmd("XADD");
        command
            .arg(topic)
            .arg("*")
            .arg("data")
            .arg(message.payload.as_ref());
        if let Some(content_type) = &message.content_type {
            command.arg("content-type").arg(content_type);
        }
        for (name, value) in &message.headers {
            command.arg(name).arg(value);
        }
        let _: String = command
            .query_async(&mut self.writer.clone())
            .await
            .map_err(|e| BrokerError::new(&self.trigger, "Redis XADD", e))?;
        Ok(())
    }
}
