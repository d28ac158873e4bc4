//! The asynchronous invocation queue of a cluster, behind the same [`InvocationStore`] the
//! embedded queue implements, so the queue's producers and its dispatcher do not change:
//!
//! - work: stream `GUST_ASYNC`, work-queue retention, one message per accepted invocation
//!   (its record and request), consumed by every node's dispatcher through one durable pull
//!   consumer, each node fetching only as many as it has delivery slots for. A message stays
//!   in progress while its attempt runs (progress acks), is sent again after a delay for a
//!   retry (a delayed NAK), and is acknowledged when the invocation ends; a node that dies
//!   leaves its messages unacknowledged and JetStream delivers them to another node after the
//!   ack wait. Acceptance (the `202`) is JetStream's acknowledgement of the message; a timer
//!   tick is published with the message id (timer, tick time), so JetStream keeps one per tick
//!   whichever nodes publish it.
//! - state: bucket `gust-invocations`, `inv.<id>` (the record, every node reads it for
//!   `gust invocation get`) and `req.<id>` (the request, until the invocation succeeds);
//! - dead letters: bucket `gust-dead-letters`, `<namespace>.<function>.<id>`, kept for the
//!   dead-letter retention.
//! - timers: bucket `gust-timer-status`, `<namespace>.<timer>` → what its ticks came to,
//!   updated by whichever node enqueued a tick or ended its invocation (revision-checked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer, pull, push};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use gust_model::{
    AsyncInvocation, AsyncSource, InvocationState, Name, Namespace, StoredRequest, TimerStatus,
};
use gust_store::{
    AsyncCounts, DeadLetterSweep, InvocationStore, QueueChange, QueueFull, QueueOutcome,
    StoreError, decode_request, encode_request,
};
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::{CALL_TIMEOUT, Cluster};

const WORK_STREAM: &str = "GUST_ASYNC";
/// Work is published on `gust.async.work.<namespace>.<function>`, so that JetStream counts a
/// namespace's waiting and running invocations (its `--max-async-queue`); a stream made by an
/// older node also holds the bare subject, whose messages are still served.
const LEGACY_WORK_SUBJECT: &str = "gust.async.work";
const WORK_SUBJECTS: &str = "gust.async.work.>";

fn work_subject(invocation: &AsyncInvocation) -> String {
    format!(
        "gust.async.work.{}.{}",
        invocation.namespace, invocation.function
    )
}
const CONSUMER: &str = "dispatch";
const STATE_BUCKET: &str = "gust-invocations";
/// `<id>` → when the invocation last showed life (accepted, attempt started or in progress,
/// retry due): one key per invocation not ended.
const OPEN_BUCKET: &str = "gust-open-invocations";
/// An invocation attempted at least once and silent this long (its attempt neither in
/// progress nor ended, or its retry this long overdue) has a message JetStream no longer
/// delivers: a consumer whose leader changed while the message was out can lose track of it
/// (NATS 2.9); the next sweep publishes its work again.
const STRANDED_AFTER: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A running invocation whose last sign of life is younger than this is being run by a node:
/// a second delivery of its message waits.
const ALIVE_WITHIN: Duration = Duration::from_secs(25);
const DEAD_LETTER_BUCKET: &str = "gust-dead-letters";
const TIMER_STATUS_BUCKET: &str = "gust-timer-status";
/// Tries at a revision-checked timer status update before it is given up (logged).
const STATUS_UPDATE_TRIES: usize = 8;
/// How long an attempt may go without a sign of life before JetStream gives its message to
/// another node; attempts in flight send one every [`PROGRESS_EVERY`].
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Timer ticks published by several nodes within this window are kept once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long the queue keeps what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct QueueRetention {
    /// Records of invocations (and the requests of those not succeeded).
    pub invocations: Duration,
    pub dead_letters: Duration,
    /// Bytes the work stream may hold; past it an invocation is refused (429).
    pub work_bytes: u64,
}

pub struct ClusterQueue {
    bridge: Bridge,
    jetstream: jetstream::Context,
    consumer: PullConsumer,
    state: kv::Store,
    open: kv::Store,
    dead_letters: kv::Store,
    timer_status: kv::Store,
    work_bytes: u64,
    /// Messages this node took, by invocation id.
    held: Arc<Mutex<HashMap<String, Held>>>,
    stop: CancellationToken,
}

impl Drop for ClusterQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A work message this node took from the consumer.
struct Held {
    message: jetstream::Message,
    /// Its attempt started (the dispatcher recorded it running): kept in progress while it
    /// runs. One taken but never started is let go after a while, for any node to take.
    started: bool,
    taken: std::time::Instant,
}

fn unavailable(what: &str) -> impl FnOnce(String) -> StoreError + '_ {
    move |err| StoreError::Unavailable(format!("{what}: {err}"))
}

/// A work message: the invocation's record as accepted and its request.
fn encode_work(invocation: &AsyncInvocation, request: &StoredRequest) -> Bytes {
    let head = serde_json::to_vec(invocation).expect("an invocation serializes");
    let mut out = Vec::with_capacity(4 + head.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&encode_request(request));
    Bytes::from(out)
}

fn decode_work(bytes: &[u8]) -> Result<(AsyncInvocation, StoredRequest), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: "work message".to_owned(),
        source: serde::de::Error::custom(reason),
    };
    let len = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| corrupt("truncated"))? as usize;
    let head = bytes.get(4..4 + len).ok_or_else(|| corrupt("truncated"))?;
    let invocation: AsyncInvocation =
        serde_json::from_slice(head).map_err(|source| StoreError::Corrupt {
            key: "work message".to_owned(),
            source,
        })?;
    let request = decode_request(&invocation.id, &bytes[4 + len..])?;
    Ok((invocation, request))
}

/// An invocation id as a key: what ids are made of (hex, dashes), nothing else.
fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn dead_letter_key(invocation: &AsyncInvocation) -> String {
    format!(
        "{}.{}.{}",
        invocation.namespace, invocation.function, invocation.id
    )
}

impl ClusterQueue {
    pub fn open(cluster: &Cluster, retention: QueueRetention) -> Result<Arc<Self>, StoreError> {
        let jetstream = cluster.jetstream.clone();
        let replicas = cluster.replicas;
        let work = stream::Config {
            name: WORK_STREAM.to_owned(),
            subjects: vec![LEGACY_WORK_SUBJECT.to_owned(), WORK_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_bytes: i64::try_from(retention.work_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let consumer = cluster
            .bridge
            .wait(CALL_TIMEOUT, async move {
                let mut stream = jetstream
                    .get_or_create_stream(work.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                // Made by an older node: it learns the namespaced subjects (nothing else of
                // its configuration changes).
                let config = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .config
                    .clone();
                if !config.subjects.iter().any(|s| s == WORK_SUBJECTS) {
                    let mut subjects = config.subjects.clone();
                    subjects.push(WORK_SUBJECTS.to_owned());
                    jetstream
                        .update_stream(stream::Config { subjects, ..config })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                stream
                    .get_or_create_consumer(
                        CONSUMER,
                        pull::Config {
                            durable_name: Some(CONSUMER.to_owned()),
                            ack_policy: AckPolicy::Explicit,
                            ack_wait: ACK_WAIT,
                            max_ack_pending: 100_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())
            })?
            .map_err(unavailable(WORK_STREAM))?;
        let state = cluster.bucket(STATE_BUCKET, retention.invocations)?;
        let open = cluster.bucket(OPEN_BUCKET, Duration::ZERO)?;
        let dead_letters = cluster.bucket(DEAD_LETTER_BUCKET, retention.dead_letters)?;
        let timer_status = cluster.bucket(TIMER_STATUS_BUCKET, Duration::ZERO)?;
        let queue = Arc::new(Self {
            bridge: cluster.bridge.clone(),
            jetstream: cluster.jetstream.clone(),
            consumer,
            state,
            open,
            dead_letters,
            timer_status,
            work_bytes: retention.work_bytes,
            held: Arc::new(Mutex::new(HashMap::new())),
            stop: CancellationToken::new(),
        });
        queue.bridge.handle().spawn(keep_in_progress(
            queue.held.clone(),
            queue.open.clone(),
            queue.stop.clone(),
        ));
        queue.bridge.handle().spawn(requeue_stranded(
            queue.jetstream.clone(),
            queue.state.clone(),
            queue.open.clone(),
            queue.stop.clone(),
        ));
        Ok(queue)
    }

    fn wait<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.bridge
            .wait(CALL_TIMEOUT, future)?
            .map_err(unavailable("the cluster's queue"))
    }

    /// Stores what every node reads of an invocation: its record, its request while it may
    /// still run, its dead letter while it is one.
    async fn record(
        state: &kv::Store,
        open: &kv::Store,
        dead_letters: &kv::Store,
        invocation: &AsyncInvocation,
        request: Option<&StoredRequest>,
    ) -> Result<(), String> {
        let id = &invocation.id;
        let record = Bytes::from(serde_json::to_vec(invocation).expect("serializes"));
        let error = |e: &dyn std::fmt::Display| e.to_string();
        // Four keys of their own, written at once: one round trip, not four.
        let open_write = async {
            match invocation.state {
                InvocationState::Pending | InvocationState::Running => {
                    let alive = invocation.next_attempt_at_ms.unwrap_or(0).max(now_ms());
                    open.put(id, Bytes::from(alive.to_string()))
                        .await
                        .map(drop)
                        .map_err(|e| error(&e))
                }
                _ => {
                    let _ = open.purge(id).await;
                    Ok(())
                }
            }
        };
        let record_write = async {
            state
                .put(format!("inv.{id}"), record.clone())
                .await
                .map(drop)
                .map_err(|e| error(&e))
        };
        let request_write = async {
            match request {
                Some(request) => state
                    .put(format!("req.{id}"), Bytes::from(encode_request(request)))
                    .await
                    .map(drop)
                    .map_err(|e| error(&e)),
                // A finished invocation's request is no longer needed.
                None if invocation.state == InvocationState::Succeeded => {
                    let _ = state.purge(format!("req.{id}")).await;
                    Ok(())
                }
                None => Ok(()),
            }
        };
        let dead_letter_write = async {
            if invocation.is_dead_letter() {
                dead_letters
                    .put(dead_letter_key(invocation), record.clone())
                    .await
                    .map(drop)
                    .map_err(|e| error(&e))
            } else {
                if invocation.redriven_to.is_some() {
                    let _ = dead_letters.purge(dead_letter_key(invocation)).await;
                }
                Ok(())
            }
        };
        let (open_written, record_written, request_written, dead_letter_written) =
            tokio::join!(open_write, record_write, request_write, dead_letter_write);
        open_written
            .and(record_written)
            .and(request_written)
            .and(dead_letter_written)
    }

    /// The namespace's messages in the work stream: its invocations waiting or running (a
    /// message is acknowledged when its invocation ends). Counted before a publish, so nodes
    /// enqueueing at the same moment may each pass the last place once.
    async fn namespace_depth(
        jetstream: &jetstream::Context,
        namespace: &Namespace,
    ) -> Result<u64, String> {
        let stream = jetstream
            .get_stream_no_info(WORK_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let mut subjects = stream
            .info_with_subjects(format!("gust.async.work.{namespace}.*"))
            .await
            .map_err(|e| e.to_string())?;
        let mut depth = 0;
        while let Some(subject) = subjects.next().await {
            depth += subject.map_err(|e| e.to_string())?.1 as u64;
        }
        Ok(depth)
    }

    #[allow(clippy::too_many_arguments)] // the queue's parts, borrowed into one task
    async fn apply_one(
        jetstream: &jetstream::Context,
        state: &kv::Store,
        open: &kv::Store,
        dead_letters: &kv::Store,
        timer_status: &kv::Store,
        held: &Mutex<HashMap<String, Held>>,
        change: &QueueChange,
        work_bytes: u64,
        now_ms: u64,
    ) -> Result<QueueOutcome, String> {
        match change {
            QueueChange::Enqueue {
                invocation,
                request,
                timer_tick,
                bounds,
            } => {
                if !id_ok(&invocation.id) {
                    return Err(format!("invocation id {:?} is not valid", invocation.id));
                }
                if invocation.state != InvocationState::Pending {
                    // A dead letter from outside the queue (a queue trigger's): nothing to run.
                    Self::record(state, open, dead_letters, invocation, Some(request)).await?;
                    return Ok(QueueOutcome::Stored);
                }
                if let Some(limit) = bounds.and_then(|b| b.per_namespace)
                    && Self::namespace_depth(jetstream, &invocation.namespace).await? >= limit
                {
                    return Ok(QueueOutcome::Full(QueueFull::NamespaceDepth { limit }));
                }
                let mut headers = async_nats::HeaderMap::new();
                let message_id = match timer_tick {
                    Some((timer, tick)) => format!("tick {timer} {tick}"),
                    None => invocation.id.clone(),
                };
                headers.insert("Nats-Msg-Id", message_id.as_str());
                let ack = jetstream
                    .publish_with_headers(
                        work_subject(invocation),
                        headers,
                        encode_work(invocation, request),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .await;
                let ack = match ack {
                    Ok(ack) => ack,
                    // The stream holds its budget of bytes.
                    Err(err) if bounds.is_some() && err.to_string().contains("maximum bytes") => {
                        return Ok(QueueOutcome::Full(QueueFull::StoreBudget {
                            limit: work_bytes,
                        }));
                    }
                    Err(err) => return Err(err.to_string()),
                };
                if ack.duplicate {
                    return Ok(if timer_tick.is_some() {
                        QueueOutcome::DuplicateTick
                    } else {
                        QueueOutcome::Stored
                    });
                }
                if let (Some((_, tick_ms)), AsyncSource::Timer { timer, .. }) =
                    (timer_tick, &invocation.source)
                {
                    let fired = |status: &mut TimerStatus| {
                        status.fired(*tick_ms);
                        true
                    };
                    update_timer_status(timer_status, &invocation.namespace, timer, true, fired)
                        .await;
                }
                // Accepted once JetStream acknowledged the message; the record is what other
                // nodes read meanwhile (the message carries it too, should this fail).
                if let Err(err) =
                    Self::record(state, open, dead_letters, invocation, Some(request)).await
                {
                    tracing::warn!(id = %invocation.id, error = %err, "cannot store an accepted invocation's record");
                }
                Ok(QueueOutcome::Stored)
            }
            QueueChange::Update { invocation } => {
                Self::record(state, open, dead_letters, invocation, None).await?;
                let message = {
                    let mut held = held.lock().expect("held lock");
                    match invocation.state {
                        InvocationState::Running => held.get_mut(&invocation.id).map(|held| {
                            held.started = true;
                            held.message.clone()
                        }),
                        _ => held.remove(&invocation.id).map(|held| held.message),
                    }
                };
                // The node that held the message ends the invocation: once.
                let ended = invocation.state.is_terminal() && message.is_some();
                if let AsyncSource::Timer { timer, .. } = &invocation.source {
                    let observe = |status: &mut TimerStatus| status.observe(invocation, ended);
                    update_timer_status(timer_status, &invocation.namespace, timer, false, observe)
                        .await;
                }
                if let Some(message) = message {
                    let ack = match invocation.state {
                        InvocationState::Running => AckKind::Progress,
                        InvocationState::Pending => AckKind::Nak(Some(Duration::from_millis(
                            invocation
                                .next_attempt_at_ms
                                .unwrap_or(now_ms)
                                .saturating_sub(now_ms),
                        ))),
                        _ => AckKind::Ack,
                    };
                    // The record is stored: an acknowledgement that does not arrive only means
                    // the message comes back, and then its record says it ended.
                    if let Err(err) = message.ack_with(ack).await {
                        tracing::debug!(id = %invocation.id, error = %err, "cannot acknowledge a work message");
                    }
                }
                Ok(QueueOutcome::Stored)
            }
        }
    }

    async fn get_record(state: &kv::Store, id: &str) -> Result<Option<AsyncInvocation>, String> {
        if !id_ok(id) {
            return Ok(None);
        }
        match state.get(format!("inv.{id}")).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("invocation {id} is unreadable: {e}")),
            Ok(None) => Ok(None),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Tells JetStream every [`PROGRESS_EVERY`] that the attempts this node runs are alive, and
/// lets go of messages taken but never started (their claim failed) so another node may.
async fn keep_in_progress(
    held: Arc<Mutex<HashMap<String, Held>>>,
    open: kv::Store,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let (running, abandoned) = {
            let mut held = held.lock().expect("held lock");
            let abandoned: Vec<String> = held
                .iter()
                .filter(|(_, h)| !h.started && h.taken.elapsed() > PROGRESS_EVERY)
                .map(|(id, _)| id.clone())
                .collect();
            let abandoned: Vec<jetstream::Message> = abandoned
                .iter()
                .filter_map(|id| held.remove(id))
                .map(|h| h.message)
                .collect();
            let running: Vec<(String, jetstream::Message)> = held
                .iter()
                .filter(|(_, h)| h.started)
                .map(|(id, h)| (id.clone(), h.message.clone()))
                .collect();
            (running, abandoned)
        };
        let alive = Bytes::from(now_ms().to_string());
        for (id, message) in running {
            let _ = message.ack_with(AckKind::Progress).await;
            let _ = open.put(&id, alive.clone()).await;
        }
        for message in abandoned {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Where a timer's status is kept in its bucket.
fn timer_status_key(namespace: &Namespace, timer: &Name) -> String {
    format!("{namespace}.{timer}")
}

/// Applies `change` to a timer's status, again on the newest record when another node
/// changed it meanwhile. A timer without one gets one only when `create` (a tick enqueued):
/// what ends after its timer was deleted leaves nothing behind. Best effort: a status that
/// cannot be written is logged, and the queue's change stands.
async fn update_timer_status(
    bucket: &kv::Store,
    namespace: &Namespace,
    timer: &Name,
    create: bool,
    change: impl Fn(&mut TimerStatus) -> bool,
) {
    let key = timer_status_key(namespace, timer);
    let mut last_error = String::new();
    for _ in 0..STATUS_UPDATE_TRIES {
        let entry = match bucket.entry(key.as_str()).await {
            Ok(entry) => entry.filter(|entry| entry.operation == kv::Operation::Put),
            Err(err) => {
                last_error = err.to_string();
                continue;
            }
        };
        if entry.is_none() && !create {
            return;
        }
        let mut status: TimerStatus = entry
            .as_ref()
            .and_then(|entry| serde_json::from_slice(&entry.value).ok())
            .unwrap_or_default();
        if !change(&mut status) {
            return;
        }
        let value = Bytes::from(serde_json::to_vec(&status).expect("serializes"));
        let written = match &entry {
            Some(entry) => bucket
                .update(key.as_str(), value, entry.revision)
                .await
                .map_err(|e| e.to_string()),
            None => bucket
                .create(key.as_str(), value)
                .await
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(_) => return,
            Err(err) => last_error = err,
        }
    }
    tracing::warn!(%namespace, %timer, error = %last_error, "cannot update a timer's status");
}

/// The keys of `bucket` that start with `prefix` (a namespace's or function's dead letters).
async fn keys_under(
    client: &async_nats::Client,
    bucket: &kv::Store,
    prefix: &str,
) -> Result<Vec<String>, String> {
    Ok(latest_under(client, bucket, prefix, false)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// The live keys of `bucket` that start with `prefix` (which ends with a `.`), each with its
/// value when `values`. Read through a consumer filtered on those keys' subjects, so listing
/// one namespace's keys costs what they are, not what every namespace's are.
async fn latest_under(
    client: &async_nats::Client,
    bucket: &kv::Store,
    prefix: &str,
    values: bool,
) -> Result<Vec<(String, Bytes)>, String> {
    let consumer = bucket
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}{prefix}>", bucket.prefix),
            headers_only: !values,
            replay_policy: consumer::ReplayPolicy::Instant,
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let read = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let pending = message.info().map_err(|e| e.to_string())?.pending;
            // A deleted or purged key keeps a marker as its last message.
            let removed = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("KV-Operation"))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            if !removed && let Some(key) = message.subject.strip_prefix(bucket.prefix.as_str()) {
                found.push((key.to_owned(), message.payload.clone()));
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(CALL_TIMEOUT, read)
        .await
        .map_err(|_| format!("listing {prefix} in {} timed out", bucket.name))??;
    Ok(found)
}

/// When the open invocation `id` last showed life.
async fn last_alive(open: &kv::Store, id: &str) -> Option<u64> {
    let bytes = open.get(id).await.ok().flatten()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

/// Every [`SWEEP_EVERY`], publishes again the work of open invocations silent for
/// [`STRANDED_AFTER`] (every node sweeps; the message id, the invocation's id and its last
/// sign of life, lets JetStream keep one of the nodes' copies), and forgets ended ones.
async fn requeue_stranded(
    jetstream: jetstream::Context,
    state: kv::Store,
    open: kv::Store,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let keys = match open.keys().await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list open invocations");
                continue;
            }
        };
        let ids: Vec<String> = keys.filter_map(|k| async move { k.ok() }).collect().await;
        tracing::debug!(open = ids.len(), "sweeping open invocations");
        let now = now_ms();
        for id in ids {
            let Some(at) = last_alive(&open, &id).await else {
                continue;
            };
            if now.saturating_sub(at) < STRANDED_AFTER.as_millis() as u64 {
                continue;
            }
            // Forgotten only when NATS answered that its record or request is gone; an error
            // leaves it for the next sweep.
            let Ok(record) = ClusterQueue::get_record(&state, &id).await else {
                continue;
            };
            let request = match state.get(format!("req.{id}")).await {
                Ok(Some(bytes)) => decode_request(&id, &bytes).ok(),
                Ok(None) => None,
                Err(_) => continue,
            };
            let (Some(invocation), Some(request)) = (record, request) else {
                let _ = open.purge(&id).await;
                continue;
            };
            if !matches!(
                invocation.state,
                InvocationState::Pending | InvocationState::Running
            ) {
                let _ = open.purge(&id).await;
                continue;
            }
            // Never attempted: its message waits behind others, which is no sign it is lost
            // (only a message that was out for an attempt or a retry can be stranded).
            if invocation.attempts == 0 {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{id} stranded {at}").as_str());
            let published = match jetstream
                .publish_with_headers(
                    work_subject(&invocation),
                    headers,
                    encode_work(&invocation, &request),
                )
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if published {
                tracing::warn!(%id, "an invocation's work message was stranded; queued again");
                let _ = open.put(&id, Bytes::from(now.to_string())).await;
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl InvocationStore for ClusterQueue {
    fn apply_queue_changes(
        &self,
        changes: &[QueueChange],
    ) -> Result<Vec<Result<QueueOutcome, StoreError>>, StoreError> {
        let (jetstream, state, open, dead_letters, timer_status, held) = (
            self.jetstream.clone(),
            self.state.clone(),
            self.open.clone(),
            self.dead_letters.clone(),
            self.timer_status.clone(),
            self.held.clone(),
        );
        let work_bytes = self.work_bytes;
        // Moved into the NATS runtime's task: the changes are re-encoded there.
        let changes: Vec<QueueChange> = changes
            .iter()
            .map(|change| match change {
                QueueChange::Enqueue {
                    invocation,
                    request,
                    timer_tick,
                    bounds,
                } => QueueChange::Enqueue {
                    invocation: invocation.clone(),
                    request: request.clone(),
                    timer_tick: timer_tick.clone(),
                    bounds: *bounds,
                },
                QueueChange::Update { invocation } => QueueChange::Update {
                    invocation: invocation.clone(),
                },
            })
            .collect();
        let updated: Vec<String> = changes
            .iter()
            .filter_map(|change| match change {
                QueueChange::Update { invocation } => Some(invocation.id.clone()),
                QueueChange::Enqueue { .. } => None,
            })
            .collect();
        let held_after = self.held.clone();
        let result = self.wait(async move {
            let now = now_ms();
            let outcomes = futures_util::future::join_all(changes.iter().map(|change| {
                Self::apply_one(
                    &jetstream,
                    &state,
                    &open,
                    &dead_letters,
                    &timer_status,
                    &held,
                    change,
                    work_bytes,
                    now,
                )
            }))
            .await;
            Ok(outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(StoreError::Unavailable))
                .collect::<Vec<_>>())
        });
        let failed = match &result {
            Ok(outcomes) => outcomes.iter().any(Result::is_err),
            Err(_) => true,
        };
        if failed && !updated.is_empty() {
            // The dispatcher drops a claim any of whose changes failed, and an outcome it
            // could not store leaves the invocation `running`: either way nothing more will
            // happen to these invocations here, so their messages go back for any node to
            // take (else they would be kept in progress for ever); the records say what was
            // stored, and an attempt that did end may run again.
            let dropped: Vec<jetstream::Message> = {
                let mut held = held_after.lock().expect("held lock");
                updated
                    .iter()
                    .filter_map(|id| held.remove(id).map(|held| held.message))
                    .collect()
            };
            self.bridge.handle().spawn(async move {
                for message in dropped {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            });
        }
        result
    }

    fn due_invocations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(AsyncInvocation, StoredRequest)>, StoreError> {
        let (consumer, state, open, held) = (
            self.consumer.clone(),
            self.state.clone(),
            self.open.clone(),
            self.held.clone(),
        );
        self.wait(async move {
            let mut messages = consumer
                .fetch()
                .max_messages(limit)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut due = Vec::new();
            while let Some(message) = messages.next().await {
                let Ok(message) = message else { break };
                let (accepted, request) = match decode_work(&message.payload) {
                    Ok(work) => work,
                    Err(err) => {
                        tracing::error!(error = %err, "dropping an unreadable work message");
                        let _ = message.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                // The record holds the attempts made so far (on any node); the message, what
                // was accepted, should the record be missing.
                let invocation = Self::get_record(&state, &accepted.id)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(accepted);
                match invocation.state {
                    InvocationState::Succeeded
                    | InvocationState::Dead
                    | InvocationState::Expired => {
                        // Ended on a node that died before acknowledging it.
                        let _ = message.ack().await;
                        continue;
                    }
                    InvocationState::Running => {
                        // Delivered again while a node still runs it (a stranded message
                        // published again, say): it waits; it runs if that node falls silent.
                        if last_alive(&open, &invocation.id).await.is_some_and(|at| {
                            now_ms.saturating_sub(at) < ALIVE_WITHIN.as_millis() as u64
                        }) {
                            let _ = message.ack_with(AckKind::Nak(Some(ACK_WAIT))).await;
                            continue;
                        }
                    }
                    InvocationState::Pending => {}
                }
                if let Some(next) = invocation.next_attempt_at_ms
                    && next > now_ms
                {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(next - now_ms))))
                        .await;
                    continue;
                }
                held.lock().expect("held lock").insert(
                    invocation.id.clone(),
                    Held {
                        message,
                        started: false,
                        taken: std::time::Instant::now(),
                    },
                );
                due.push((invocation, request));
            }
            Ok(due)
        })
    }

    fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        // Work arrives from every node: the dispatcher looks again within its idle poll.
        Ok(None)
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        let mut consumer = self.consumer.clone();
        self.wait(async move {
            consumer
                .info()
                .await
                .map(|info| info.num_pending + info.num_ack_pending as u64)
                .map_err(|e| e.to_string())
        })
    }

    /// Open invocations are the namespace's messages in the work stream; which of them run
    /// now only the node running each knows.
    fn async_counts(&self, namespace: &Namespace) -> Result<AsyncCounts, StoreError> {
        let (jetstream, dead_letters) = (self.jetstream.clone(), self.dead_letters.clone());
        let namespace = namespace.clone();
        self.wait(async move {
            let open = Self::namespace_depth(&jetstream, &namespace).await?;
            let dead =
                keys_under(&jetstream.client(), &dead_letters, &format!("{namespace}.")).await?;
            Ok(AsyncCounts {
                open,
                running: None,
                dead_letters: dead.len() as u64,
                succeeded: None,
                failed: None,
            })
        })
    }

    fn timer_statuses(
        &self,
        namespace: &Namespace,
    ) -> Result<HashMap<String, TimerStatus>, StoreError> {
        let (client, bucket) = (self.jetstream.client(), self.timer_status.clone());
        let prefix = format!("{namespace}.");
        self.wait(async move {
            let mut statuses = HashMap::new();
            for (key, bytes) in latest_under(&client, &bucket, &prefix, true).await? {
                if let Ok(status) = serde_json::from_slice(&bytes) {
                    statuses.insert(key[prefix.len()..].to_owned(), status);
                }
            }
            Ok(statuses)
        })
    }

    fn reset_timer_status(
        &self,
        namespace: &Namespace,
        name: &Name,
        since_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let (bucket, key) = (self.timer_status.clone(), timer_status_key(namespace, name));
        self.wait(async move {
            match since_ms {
                Some(since) => {
                    let fresh = serde_json::to_vec(&TimerStatus::since(since)).expect("serializes");
                    bucket
                        .put(key, Bytes::from(fresh))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                None => bucket.purge(key).await.map_err(|e| e.to_string()),
            }
        })
    }

    fn invocation(&self, id: &str) -> Result<Option<AsyncInvocation>, StoreError> {
        let (state, id) = (self.state.clone(), id.to_owned());
        self.wait(async move { Self::get_record(&state, &id).await })
    }

    fn invocation_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        if !id_ok(id) {
            return Ok(None);
        }
        let (state, id) = (self.state.clone(), id.to_owned());
        let bytes = self.wait(async move {
            state
                .get(format!("req.{id}"))
                .await
                .map(|b| b.map(|b| (id, b)))
                .map_err(|e| e.to_string())
        })?;
        bytes
            .map(|(id, bytes)| decode_request(&id, &bytes))
            .transpose()
    }

    fn dead_letters(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<AsyncInvocation>, StoreError> {
        let prefix = match function {
            Some(function) => format!("{namespace}.{function}."),
            None => format!("{namespace}."),
        };
        let (client, bucket) = (self.jetstream.client(), self.dead_letters.clone());
        self.wait(async move {
            let mut keys = keys_under(&client, &bucket, &prefix).await?;
            keys.sort();
            let mut out = Vec::new();
            for key in keys.into_iter().take(limit) {
                if let Ok(Some(bytes)) = bucket.get(&key).await
                    && let Ok(invocation) = serde_json::from_slice::<AsyncInvocation>(&bytes)
                {
                    out.push(invocation);
                }
            }
            Ok(out)
        })
    }

    fn purge_dead_letters(&self, ids: &[String]) -> Result<usize, StoreError> {
        let (state, bucket, ids) = (self.state.clone(), self.dead_letters.clone(), ids.to_vec());
        self.wait(async move {
            let mut purged = 0;
            for id in ids {
                let Some(invocation) = Self::get_record(&state, &id).await? else {
                    continue;
                };
                if !invocation.is_dead_letter() {
                    continue;
                }
                bucket
                    .purge(dead_letter_key(&invocation))
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = state.purge(format!("req.{id}")).await;
                let _ = state.purge(format!("inv.{id}")).await;
                purged += 1;
            }
            Ok(purged)
        })
    }

    fn sweep_finished(&self, _before_ms: u64, _limit: usize) -> Result<usize, StoreError> {
        // The state bucket's records expire on their own (its max age is the retention).
        Ok(0)
    }

    fn sweep_dead_letters(
        &self,
        _before_ms: u64,
        _per_function: u64,
        _limit: usize,
    ) -> Result<DeadLetterSweep, StoreError> {
        // Dead letters expire with their bucket's max age; the per-function cap is not kept in
        // a cluster.
        Ok(DeadLetterSweep::default())
    }

    fn recover_running(&self, _now_ms: u64) -> Result<usize, StoreError> {
        // Attempts a node was running when it stopped are delivered again by JetStream once
        // their ack wait passes.
        Ok(0)
    }
}
