//! The metadata store traits over the `gust-metadata` key-value bucket.
//!
//! Every read is served from a local copy of the bucket that a watch keeps current, so the
//! request path (a route table, a function's current revision) never waits on NATS. Writes
//! go to NATS and are acknowledged by JetStream before they return:
//! - a function update is revision-checked: it reads the stored record with its revision,
//!   applies the change and writes only if nobody wrote in between, else it fails with
//!   [`StoreError::Changed`] (409): two nodes updating one function never lose one silently;
//! - a write that checks other records (a route against every route, a function against its
//!   environment, an environment's delete against its users) waits until the local copy has
//!   every write the bucket holds, checks, and is stored only if the bucket's last revision
//!   is still the one it checked at (JetStream's expected last sequence), else tries again:
//!   the check and the write are one step across the cluster;
//! - a create fails if the key exists, whoever wrote it.
//!
//! Changes written by other nodes are reported through [`ClusterStore::changes`], so the node
//! reloads what they affect (routes, pools, timers, queue triggers, instances of a changed
//! function); this node's own writes are not reported: the API that made them acts on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use gust_model::{
    ApiToken, Environment, Function, MqTrigger, Name, Namespace, NamespaceRecord, Route, Timer,
    ValueKind, ValueSet,
};
use gust_store::{
    AccessStore, CodeStore, EnvironmentStore, FunctionStore, MqTriggerStore, RouteStore,
    StoreError, TimerStore, ValueStore,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::code::ClusterCode;
use crate::{CALL_TIMEOUT, Cluster, bridge::Bridge};

const METADATA_BUCKET: &str = "gust-metadata";
/// How often the watch checks that it keeps up with the bucket, and how long it may stay
/// behind before it is started again.
const STALL_CHECK: Duration = Duration::from_secs(1);
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Longest a checked write waits for the local copy to catch up, and keeps trying while
/// other writes land first.
const CHECKED_WAIT: Duration = Duration::from_secs(10);

/// One record of the bucket, decoded once when it arrives.
#[derive(Clone)]
enum Record {
    Environment(Environment),
    Function(Box<Function>),
    Route(Route),
    Timer(Timer),
    MqTrigger(MqTrigger),
    /// An admin token's hash (the key) and where it came from.
    Token,
    Namespace(NamespaceRecord),
    ApiToken(Box<ApiToken>),
    Values(Box<ValueSet>),
}

/// An admin token's hash, stored under `token.<sha256 hex>`; the token itself is never stored.
#[derive(Clone, Serialize, Deserialize)]
struct TokenRecord {
    node: String,
    created_at_ms: u64,
}

/// What kind of record a key holds, by its first part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Environment,
    Function,
    Route,
    Timer,
    MqTrigger,
    Token,
    Namespace,
    ApiToken,
    Values,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Environment => "env.",
            Kind::Function => "fn.",
            Kind::Route => "route.",
            Kind::Timer => "timer.",
            Kind::MqTrigger => "mqt.",
            Kind::Token => "token.",
            Kind::Namespace => "ns.",
            Kind::ApiToken => "apitoken.",
            Kind::Values => "values.",
        }
    }

    fn of(key: &str) -> Option<Kind> {
        [
            Kind::Environment,
            Kind::Function,
            Kind::Route,
            Kind::Timer,
            Kind::MqTrigger,
            Kind::Token,
            Kind::Namespace,
            Kind::ApiToken,
            Kind::Values,
        ]
        .into_iter()
        .find(|kind| key.starts_with(kind.prefix()))
    }

    fn decode(self, key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
        let corrupt = |source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        };
        Ok(match self {
            Kind::Environment => {
                Record::Environment(serde_json::from_slice(bytes).map_err(corrupt)?)
            }
            Kind::Function => {
                Record::Function(Box::new(serde_json::from_slice(bytes).map_err(corrupt)?))
            }
            Kind::Route => Record::Route(serde_json::from_slice(bytes).map_err(corrupt)?),
            Kind::Timer => Record::Timer(serde_json::from_slice(bytes).map_err(corrupt)?),
            Kind::MqTrigger => Record::MqTrigger(serde_json::from_slice(bytes).map_err(corrupt)?),
            Kind::Token => {
                serde_json::from_slice::<TokenRecord>(bytes).map_err(corrupt)?;
                Record::Token
            }
            Kind::Namespace => Record::Namespace(serde_json::from_slice(bytes).map_err(corrupt)?),
            Kind::ApiToken => {
                Record::ApiToken(Box::new(serde_json::from_slice(bytes).map_err(corrupt)?))
            }
            Kind::Values => {
                Record::Values(Box::new(serde_json::from_slice(bytes).map_err(corrupt)?))
            }
        })
    }
}

fn scoped(kind: Kind, namespace: &Namespace, name: &Name) -> String {
    format!("{}{namespace}.{name}", kind.prefix())
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("metadata types serialize to JSON"))
}

/// What other nodes changed since the last call of [`ClusterStore::changes`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetadataChanges {
    pub environments: bool,
    pub routes: bool,
    pub timers: bool,
    pub mq_triggers: bool,
    /// Namespaces created, deleted or given other quotas.
    pub namespaces: bool,
    /// Secrets and configs written or deleted: the functions that mount them start new
    /// instances.
    pub values: std::collections::BTreeSet<(Namespace, ValueKind, Name)>,
    /// Functions written (`false`) or deleted (`true`).
    pub functions: BTreeMap<(Namespace, Name), bool>,
}

impl MetadataChanges {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn note(&mut self, key: &str, deleted: bool) {
        match Kind::of(key) {
            Some(Kind::Environment) => self.environments = true,
            Some(Kind::Route) => self.routes = true,
            Some(Kind::Timer) => self.timers = true,
            Some(Kind::MqTrigger) => self.mq_triggers = true,
            Some(Kind::Function) => {
                let rest = &key[Kind::Function.prefix().len()..];
                if let Some((namespace, name)) = rest.split_once('.')
                    && let (Ok(namespace), Ok(name)) =
                        (Namespace::parse(namespace), Name::parse("function", name))
                {
                    self.functions.insert((namespace, name), deleted);
                }
            }
            Some(Kind::Namespace) => self.namespaces = true,
            Some(Kind::Values) => {
                let rest = &key[Kind::Values.prefix().len()..];
                let mut parts = rest.splitn(3, '.');
                let kind = match parts.next() {
                    Some("secret") => Some(ValueKind::Secret),
                    Some("config") => Some(ValueKind::Config),
                    _ => None,
                };
                if let (Some(kind), Some(namespace), Some(name)) =
                    (kind, parts.next(), parts.next())
                    && let (Ok(namespace), Ok(name)) =
                        (Namespace::parse(namespace), Name::parse(kind.noun(), name))
                {
                    self.values.insert((namespace, kind, name));
                }
            }
            Some(Kind::Token | Kind::ApiToken) | None => {}
        }
    }
}

/// A change the watch delivered: its revision, and the record (`None` for a delete).
type Seen = (u64, Option<Record>);

/// The local copy of the bucket.
#[derive(Default)]
struct Replica {
    records: BTreeMap<String, (u64, Record)>,
    /// Deleted keys with the revision of their delete: an older value the watch may still
    /// bring must not bring them back.
    deleted: HashMap<String, u64>,
    /// The highest bucket revision the watch has delivered.
    revision: u64,
    /// Keys this node is writing now: how many writes, and the newest change the watch
    /// delivered meanwhile (revision, record or `None` for a delete), applied when they end.
    writing: HashMap<String, (usize, Option<Seen>)>,
    /// The watch has delivered the bucket's content as it was when it started.
    loaded: bool,
    changes: MetadataChanges,
}

impl Replica {
    /// Applies a change unless the copy holds a newer one; returns whether it did.
    fn apply(&mut self, key: &str, revision: u64, record: Option<Record>) -> bool {
        let held = self
            .records
            .get(key)
            .map(|(held, _)| *held)
            .max(self.deleted.get(key).copied())
            .unwrap_or(0);
        if held >= revision {
            return false;
        }
        match record {
            Some(record) => {
                self.deleted.remove(key);
                self.records.insert(key.to_owned(), (revision, record));
            }
            None => {
                self.records.remove(key);
                self.deleted.insert(key.to_owned(), revision);
            }
        }
        true
    }
}

pub struct ClusterStore {
    bridge: Bridge,
    client: async_nats::Client,
    metadata: kv::Store,
    jetstream: async_nats::jetstream::Context,
    node_id: String,
    code: Arc<ClusterCode>,
    copy: Arc<Mutex<Replica>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
}

impl Drop for ClusterStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ClusterStore {
    /// Opens the cluster's metadata, with `code` as this node's cache of code trees, and
    /// returns once the local copy holds everything stored.
    pub fn open(cluster: &Cluster, code: Arc<CodeStore>) -> Result<Arc<Self>, StoreError> {
        let metadata = cluster.bucket(METADATA_BUCKET, Duration::ZERO)?;
        let store = Arc::new(Self {
            bridge: cluster.bridge.clone(),
            client: cluster.client.clone(),
            metadata: metadata.clone(),
            jetstream: cluster.jetstream.clone(),
            node_id: cluster.node_id.clone(),
            code: Arc::new(ClusterCode::open(cluster, code)?),
            copy: Arc::new(Mutex::new(Replica::default())),
            changed: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        });
        let loaded = Arc::new(Notify::new());
        store.bridge.handle().spawn(watch(
            metadata,
            store.copy.clone(),
            store.changed.clone(),
            loaded.clone(),
            store.stop.clone(),
        ));
        let copy = store.copy.clone();
        store
            .bridge
            .wait(Duration::from_secs(30), async move {
                loop {
                    let notified = loaded.notified();
                    if copy.lock().expect("copy lock").loaded {
                        return;
                    }
                    notified.await;
                }
            })
            .map_err(|_| {
                StoreError::Unavailable("the cluster's metadata did not load within 30s".into())
            })?;
        Ok(store)
    }

    /// The cluster's shared code trees.
    pub fn code(&self) -> Arc<ClusterCode> {
        self.code.clone()
    }

    /// Waits until other nodes changed something, and says what.
    pub async fn changes(&self) -> MetadataChanges {
        loop {
            let notified = self.changed.notified();
            let changes = std::mem::take(&mut self.lock().changes);
            if !changes.is_empty() {
                return changes;
            }
            notified.await;
        }
    }

    fn connected(&self) -> Result<(), StoreError> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "this node is not connected to NATS; writes resume when it is".to_owned(),
            ))
        }
    }

    fn lock(&self) -> MutexGuard<'_, Replica> {
        self.copy.lock().expect("the copy's lock is never poisoned")
    }

    fn get(&self, key: &str) -> Option<Record> {
        self.lock()
            .records
            .get(key)
            .map(|(_, record)| record.clone())
    }

    /// Records of one kind, by key (one namespace's if given).
    fn all<T>(
        &self,
        kind: Kind,
        namespace: Option<&Namespace>,
        take: impl Fn(Record) -> Option<T>,
    ) -> Vec<T> {
        let prefix = match namespace {
            Some(ns) => format!("{}{ns}.", kind.prefix()),
            None => kind.prefix().to_owned(),
        };
        self.lock()
            .records
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, (_, record))| take(record.clone()))
            .collect()
    }

    fn function_exists(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        match self.get(&scoped(Kind::Function, namespace, name)) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "function",
                name: name.to_string(),
            }),
        }
    }

    fn environment_exists(&self, name: &Name) -> Result<(), StoreError> {
        match self.get(&format!("{}{name}", Kind::Environment.prefix())) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "environment",
                name: name.to_string(),
            }),
        }
    }

    /// Registers an admin token (its hash) so that every node accepts it.
    pub fn register_token(&self, token: &str) -> Result<(), StoreError> {
        let key = token_key(token);
        if self.get(&key).is_some() {
            return Ok(());
        }
        let record = TokenRecord {
            node: self.node_id.clone(),
            created_at_ms: now_ms(),
        };
        match self.write(&key, Some(Record::Token), Write::Create(encode(&record))) {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Whether `token` is one of the cluster's admin tokens.
    pub fn accepts_token(&self, token: &str) -> bool {
        matches!(self.get(&token_key(token)), Some(Record::Token))
    }

    /// Writes one key; the local copy holds the result before this returns.
    fn write(&self, key: &str, record: Option<Record>, write: Write) -> Result<(), StoreError> {
        self.connected()?;
        self.lock().writing.entry(key.to_owned()).or_default().0 += 1;
        let (metadata, jetstream) = (self.metadata.clone(), self.jetstream.clone());
        let owned_key = key.to_owned();
        let result = self
            .bridge
            .wait(CALL_TIMEOUT, async move {
                write.run(&metadata, &jetstream, &owned_key).await
            })
            .and_then(|result| result);
        let mut copy = self.lock();
        let seen = match copy.writing.get_mut(key) {
            Some((writers, seen)) => {
                *writers -= 1;
                let seen = seen.take();
                if *writers == 0 {
                    copy.writing.remove(key);
                }
                seen
            }
            None => None,
        };
        if let Ok(revision) = &result {
            copy.apply(key, *revision, record);
        }
        // Another node's change that arrived while this write was under way.
        if let Some((revision, record)) = seen
            && copy.apply(key, revision, record.clone())
            && result.as_ref().map_or(true, |own| revision > *own)
        {
            copy.changes.note(key, record.is_none());
            self.changed.notify_one();
        }
        result.map(drop)
    }

    /// Waits until the local copy holds every write the bucket has now; returns the bucket's
    /// last revision.
    fn caught_up(&self) -> Result<u64, StoreError> {
        let (metadata, copy) = (self.metadata.clone(), self.copy.clone());
        self.bridge
            .wait(CHECKED_WAIT + CALL_TIMEOUT, async move {
                let last = metadata
                    .stream
                    .get_info()
                    .await
                    .map_err(|err| {
                        StoreError::Unavailable(format!("cannot read the metadata bucket: {err}"))
                    })?
                    .state
                    .last_sequence;
                let deadline = Instant::now() + CHECKED_WAIT;
                while copy.lock().expect("copy lock").revision < last {
                    if Instant::now() > deadline {
                        return Err(StoreError::Unavailable(
                            "this node's copy of the metadata is behind; try again".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(last)
            })
            .and_then(|result| result)
    }

    /// A write that depends on other records (a route on every other route, a function on
    /// its environment): `prepare` checks them against the local copy once it has caught up
    /// with the bucket, and returns the new record and its JSON (`None` to delete `key`).
    /// JetStream stores it only if the bucket's last revision is still the one the checks
    /// were made at; when another write landed first, the copy catches up and `prepare` runs
    /// again. So a check and its write are one step, whichever nodes write at once.
    fn checked(
        &self,
        key: &str,
        mut prepare: impl FnMut() -> Result<Option<(Record, Bytes)>, StoreError>,
    ) -> Result<(), StoreError> {
        self.connected()?;
        let deadline = Instant::now() + CHECKED_WAIT;
        loop {
            let last = self.caught_up()?;
            let (record, value) = match prepare()? {
                Some((record, value)) => (Some(record), Some(value)),
                None => (None, None),
            };
            match self.write(key, record, Write::Checked { value, last }) {
                Err(StoreError::Changed { .. }) if Instant::now() < deadline => continue,
                Err(StoreError::Changed { .. }) => {
                    return Err(StoreError::Unavailable(
                        "the cluster's metadata kept changing under this write; try again".into(),
                    ));
                }
                other => return other,
            }
        }
    }

    /// Creates `key` holding `value` once `check` passes against the caught-up copy; `kind`
    /// and `name` say what, for the error.
    fn create<T: Serialize>(
        &self,
        key: String,
        value: &T,
        record: Record,
        (kind, name): (&'static str, &Name),
        check: impl Fn() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let bytes = encode(value);
        self.checked(&key, || {
            if self.get(&key).is_some() {
                return Err(StoreError::AlreadyExists {
                    kind,
                    name: name.to_string(),
                });
            }
            check()?;
            Ok(Some((record.clone(), bytes.clone())))
        })
    }

    /// Deletes `key`, which must exist.
    fn delete(&self, key: String, (kind, name): (&'static str, &Name)) -> Result<(), StoreError> {
        let Some(revision) = self.lock().records.get(&key).map(|(revision, _)| *revision) else {
            return Err(StoreError::NotFound {
                kind,
                name: name.to_string(),
            });
        };
        self.write(&key, None, Write::Delete(revision))
            .map_err(|err| match err {
                StoreError::Changed { .. } => StoreError::Changed {
                    kind,
                    name: name.to_string(),
                },
                other => other,
            })
    }
}

fn token_key(token: &str) -> String {
    format!(
        "{}{}",
        Kind::Token.prefix(),
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One write to the bucket.
enum Write {
    /// Fails if the key holds a value.
    Create(Bytes),
    Put(Bytes),
    /// Fails unless the key is still at this revision.
    Delete(u64),
    /// A put (or a delete, without a value) that fails unless the bucket's last revision is
    /// still `last`.
    Checked {
        value: Option<Bytes>,
        last: u64,
    },
}

impl Write {
    /// Returns the key's new revision.
    async fn run(
        self,
        metadata: &kv::Store,
        jetstream: &async_nats::jetstream::Context,
        key: &str,
    ) -> Result<u64, StoreError> {
        let failed = |err: String| StoreError::Unavailable(format!("cannot write {key}: {err}"));
        match self {
            Write::Create(value) => metadata.create(key, value).await.map_err(|err| {
                if err.kind() == kv::CreateErrorKind::AlreadyExists {
                    StoreError::AlreadyExists {
                        kind: "record",
                        name: key.to_owned(),
                    }
                } else {
                    failed(err.to_string())
                }
            }),
            Write::Put(value) => metadata
                .put(key, value)
                .await
                .map_err(|err| failed(err.to_string())),
            Write::Delete(revision) => {
                // A delete marker published by hand rather than with the bucket's delete,
                // which does not say the marker's revision: the copy keeps it, so that an
                // older value the watch may still bring does not bring the key back.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("KV-Operation", "DEL");
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    revision.to_string().as_str(),
                );
                publish(jetstream, key, headers, Bytes::new()).await
            }
            Write::Checked { value, last } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
                let value = match value {
                    Some(value) => value,
                    None => {
                        headers.insert("KV-Operation", "DEL");
                        Bytes::new()
                    }
                };
                publish(jetstream, key, headers, value).await
            }
        }
    }
}

/// Publishes to `key` of the metadata bucket's stream with `headers` (expectations, an
/// operation) and returns the message's revision; a failed expectation is
/// [`StoreError::Changed`].
async fn publish(
    jetstream: &async_nats::jetstream::Context,
    key: &str,
    headers: async_nats::HeaderMap,
    value: Bytes,
) -> Result<u64, StoreError> {
    use async_nats::jetstream::context::PublishErrorKind;
    let failed = |err: String| StoreError::Unavailable(format!("cannot write {key}: {err}"));
    let ack = jetstream
        .publish_with_headers(format!("$KV.{METADATA_BUCKET}.{key}"), headers, value)
        .await
        .map_err(|err| failed(err.to_string()))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Err(StoreError::Changed {
            kind: "record",
            name: key.to_owned(),
        }),
        Err(err) => Err(failed(err.to_string())),
    }
}

/// Keeps the local copy current: the bucket's content first, then every change, resuming
/// after the last revision seen whenever the watch breaks (NATS restarted, a network cut).
async fn watch(
    metadata: kv::Store,
    copy: Arc<Mutex<Replica>>,
    changed: Arc<Notify>,
    loaded: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut reported_down = false;
    loop {
        let from = copy.lock().expect("copy lock").revision;
        let started = if from == 0 {
            // An empty bucket delivers nothing: it is loaded as soon as we know it is empty.
            match metadata.stream.get_info().await {
                Ok(info) if info.state.messages == 0 => {
                    copy.lock().expect("copy lock").loaded = true;
                    loaded.notify_waiters();
                    metadata.watch_all_from_revision(1).await
                }
                // The last value of every key, then every change.
                Ok(_) => metadata.watch_with_history(">").await,
                Err(err) => Err(kv::WatchError::with_source(kv::WatchErrorKind::Other, err)),
            }
        } else {
            metadata.watch_all_from_revision(from + 1).await
        };
        let mut entries = match started {
            Ok(entries) => entries,
            Err(err) => {
                if !reported_down {
                    tracing::warn!(error = %err, "cannot watch the cluster's metadata; retrying");
                    reported_down = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if reported_down {
            tracing::info!("watching the cluster's metadata again");
            reported_down = false;
        }
        let mut check = tokio::time::interval(STALL_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The bucket's last revision when the copy was first seen behind it, and when.
        let mut behind: Option<(u64, Instant)> = None;
        let mut unanswered = 0;
        loop {
            let entry = tokio::select! {
                _ = stop.cancelled() => return,
                entry = entries.next() => entry,
                _ = check.tick() => {
                    // A watch whose consumer went with a NATS server can stay silent rather
                    // than fail: if the bucket holds writes the copy lacks for too long, the
                    // watch starts again from the copy's revision.
                    let applied = copy.lock().expect("copy lock").revision;
                    if behind.is_some_and(|(target, _)| applied >= target) {
                        behind = None;
                    }
                    // Asked of the stream: the bucket's own status is the one it was opened with.
                    match metadata.stream.get_info().await {
                        Ok(info) => {
                            unanswered = 0;
                            if info.state.last_sequence > applied {
                                let (_, since) = *behind
                                    .get_or_insert((info.state.last_sequence, Instant::now()));
                                if since.elapsed() >= STALL_LIMIT {
                                    tracing::warn!("the metadata watch fell behind; starting it again");
                                    break;
                                }
                            }
                        }
                        // A stream that does not answer for a while (its leader gone with a
                        // NATS server) may have taken the watch's consumer with it.
                        Err(_) => {
                            unanswered += 1;
                            if unanswered >= 3 {
                                tracing::warn!("the metadata bucket does not answer; starting the watch again");
                                break;
                            }
                        }
                    }
                    continue;
                }
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "the metadata watch broke; resuming");
                    break;
                }
                None => break,
            };
            receive(&copy, &changed, &entry);
            if entry.delta == 0 || entry.seen_current {
                let mut held = copy.lock().expect("copy lock");
                if !held.loaded {
                    held.loaded = true;
                    loaded.notify_waiters();
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Applies one entry the watch delivered. Every entry counts towards the revision the copy
/// has reached, whatever its key; an unknown key is skipped and an unreadable record leaves
/// the copy's value as it was (a newer node's record this one cannot read is not a delete).
fn receive(copy: &Mutex<Replica>, changed: &Notify, entry: &kv::Entry) {
    let mut held = copy.lock().expect("copy lock");
    held.revision = held.revision.max(entry.revision);
    let Some(kind) = Kind::of(&entry.key) else {
        return;
    };
    let record = match entry.operation {
        kv::Operation::Put => {
            match kind
                .decode(&entry.key, &entry.value)
                .and_then(|record| record.checked(&entry.key))
            {
                Ok(record) => Some(record),
                Err(err) => {
                    tracing::error!(key = %entry.key, error = %err, "skipping an unreadable metadata record");
                    return;
                }
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    if let Some((_, seen)) = held.writing.get_mut(&entry.key) {
        if seen
            .as_ref()
            .is_none_or(|(revision, _)| *revision < entry.revision)
        {
            *seen = Some((entry.revision, record));
        }
        return;
    }
    let deleted = record.is_none();
    if held.apply(&entry.key, entry.revision, record) && held.loaded {
        held.changes.note(&entry.key, deleted);
        changed.notify_one();
    }
}

impl Record {
    /// What a record must hold for this node to use it safely, whoever wrote it: its key
    /// names it, a function's current revision is among its revisions, and code digests are
    /// digests (a digest becomes a directory name).
    fn checked(self, key: &str) -> Result<Record, StoreError> {
        let invalid = |reason: String| StoreError::Corrupt {
            key: key.to_owned(),
            source: serde::de::Error::custom(reason),
        };
        match &self {
            Record::Function(function) => {
                if scoped(Kind::Function, &function.namespace, &function.name) != key {
                    return Err(invalid(format!(
                        "holds function {}/{}",
                        function.namespace, function.name
                    )));
                }
                if function.revision(function.current).is_none() {
                    return Err(invalid(format!(
                        "its current revision {} is not among its revisions",
                        function.current
                    )));
                }
                for revision in &function.revisions {
                    if !gust_store::is_code_digest(&revision.code.digest) {
                        return Err(invalid(format!(
                            "revision {} has no code digest",
                            revision.number
                        )));
                    }
                }
            }
            Record::Environment(env)
                if format!("{}{}", Kind::Environment.prefix(), env.name) != key =>
            {
                return Err(invalid(format!("holds environment {}", env.name)));
            }
            Record::Route(route) if scoped(Kind::Route, &route.namespace, &route.name) != key => {
                return Err(invalid(format!("holds route {}", route.name)));
            }
            Record::Timer(timer) if scoped(Kind::Timer, &timer.namespace, &timer.name) != key => {
                return Err(invalid(format!("holds timer {}", timer.name)));
            }
            Record::MqTrigger(trigger)
                if scoped(Kind::MqTrigger, &trigger.namespace, &trigger.name) != key =>
            {
                return Err(invalid(format!("holds queue trigger {}", trigger.name)));
            }
            Record::Namespace(record)
                if format!("{}{}", Kind::Namespace.prefix(), record.name) != key =>
            {
                return Err(invalid(format!("holds namespace {}", record.name)));
            }
            Record::ApiToken(token)
                if format!("{}{}", Kind::ApiToken.prefix(), token.id) != key =>
            {
                return Err(invalid(format!("holds token {}", token.id)));
            }
            Record::Values(set) if values_key(set.kind, &set.namespace, &set.name) != key => {
                return Err(invalid(format!("holds {} {}", set.kind.noun(), set.name)));
            }
            _ => {}
        }
        Ok(self)
    }
}

impl EnvironmentStore for ClusterStore {
    fn create_environment(&self, env: &Environment) -> Result<(), StoreError> {
        let key = format!("{}{}", Kind::Environment.prefix(), env.name);
        self.create(
            key,
            env,
            Record::Environment(env.clone()),
            ("environment", &env.name),
            || Ok(()),
        )
    }

    fn put_environment(&self, env: &Environment) -> Result<(), StoreError> {
        let key = format!("{}{}", Kind::Environment.prefix(), env.name);
        // Every node puts the built-in environments at start: an equal one is left alone.
        if let Some(Record::Environment(stored)) = self.get(&key)
            && encode(&stored) == encode(env)
        {
            return Ok(());
        }
        self.write(
            &key,
            Some(Record::Environment(env.clone())),
            Write::Put(encode(env)),
        )
    }

    fn environment(&self, name: &Name) -> Result<Option<Environment>, StoreError> {
        Ok(
            match self.get(&format!("{}{name}", Kind::Environment.prefix())) {
                Some(Record::Environment(env)) => Some(env),
                _ => None,
            },
        )
    }

    fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        Ok(self.all(Kind::Environment, None, |record| match record {
            Record::Environment(env) => Some(env),
            _ => None,
        }))
    }

    fn delete_environment(&self, name: &Name) -> Result<(), StoreError> {
        let key = format!("{}{name}", Kind::Environment.prefix());
        self.checked(&key, || {
            if self.get(&key).is_none() {
                return Err(StoreError::NotFound {
                    kind: "environment",
                    name: name.to_string(),
                });
            }
            let users = self.all(Kind::Function, None, |record| match record {
                Record::Function(function) => Some(function),
                _ => None,
            });
            if let Some(user) = users
                .iter()
                .find(|f| f.current_revision().environment == *name)
            {
                return Err(StoreError::InUse {
                    kind: "environment",
                    name: name.to_string(),
                    user: format!("function {}/{}", user.namespace, user.name),
                });
            }
            Ok(None)
        })
    }
}

impl FunctionStore for ClusterStore {
    fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        self.code.share_revisions(function)?;
        self.create(
            scoped(Kind::Function, &function.namespace, &function.name),
            function,
            Record::Function(Box::new(function.clone())),
            ("function", &function.name),
            || self.environment_exists(&function.current_revision().environment),
        )
    }

    fn update_function(
        &self,
        namespace: &Namespace,
        name: &Name,
        change: &mut dyn FnMut(Function) -> Result<Function, StoreError>,
    ) -> Result<Function, StoreError> {
        self.connected()?;
        let key = scoped(Kind::Function, namespace, name);
        // The function as the bucket holds it now (the copy, caught up): an update made on
        // another node a moment ago counts.
        self.caught_up()?;
        let (revision, current) = match self.lock().records.get(&key) {
            Some((revision, Record::Function(function))) => (*revision, (**function).clone()),
            _ => {
                return Err(StoreError::NotFound {
                    kind: "function",
                    name: name.to_string(),
                });
            }
        };
        let updated = change(current)?;
        self.code.share_revisions(&updated)?;
        let (record, bytes) = (
            Record::Function(Box::new(updated.clone())),
            encode(&updated),
        );
        self.checked(&key, || {
            // Still the function the change was made to: else another request changed it
            // in between, and this one is refused rather than written over it.
            let held = self.lock().records.get(&key).map(|(revision, _)| *revision);
            if held != Some(revision) {
                return Err(StoreError::Changed {
                    kind: "function",
                    name: name.to_string(),
                });
            }
            self.environment_exists(&updated.current_revision().environment)?;
            Ok(Some((record.clone(), bytes.clone())))
        })?;
        Ok(updated)
    }

    fn function(&self, namespace: &Namespace, name: &Name) -> Result<Option<Function>, StoreError> {
        Ok(match self.get(&scoped(Kind::Function, namespace, name)) {
            Some(Record::Function(function)) => Some(*function),
            _ => None,
        })
    }

    fn functions(&self, namespace: Option<&Namespace>) -> Result<Vec<Function>, StoreError> {
        Ok(self.all(Kind::Function, namespace, |record| match record {
            Record::Function(function) => Some(*function),
            _ => None,
        }))
    }

    fn delete_function(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        let key = scoped(Kind::Function, namespace, name);
        self.checked(&key, || match self.get(&key) {
            Some(_) => Ok(None),
            None => Err(StoreError::NotFound {
                kind: "function",
                name: name.to_string(),
            }),
        })
    }
}

impl RouteStore for ClusterStore {
    fn create_route(&self, route: &Route) -> Result<(), StoreError> {
        self.create(
            scoped(Kind::Route, &route.namespace, &route.name),
            route,
            Record::Route(route.clone()),
            ("route", &route.name),
            || {
                self.function_exists(&route.namespace, &route.function)?;
                for existing in self.routes(None)? {
                    let name = format!("{}/{}", existing.namespace, existing.name);
                    if let Some(clash) = StoreError::route_clash(route, &existing, name) {
                        return Err(clash);
                    }
                }
                Ok(())
            },
        )
    }

    fn routes(&self, namespace: Option<&Namespace>) -> Result<Vec<Route>, StoreError> {
        Ok(self.all(Kind::Route, namespace, |record| match record {
            Record::Route(route) => Some(route),
            _ => None,
        }))
    }

    fn delete_route(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        self.delete(scoped(Kind::Route, namespace, name), ("route", name))
    }
}

impl TimerStore for ClusterStore {
    fn create_timer(&self, timer: &Timer) -> Result<(), StoreError> {
        self.create(
            scoped(Kind::Timer, &timer.namespace, &timer.name),
            timer,
            Record::Timer(timer.clone()),
            ("timer", &timer.name),
            || self.function_exists(&timer.namespace, &timer.function),
        )
    }

    fn timers(&self, namespace: Option<&Namespace>) -> Result<Vec<Timer>, StoreError> {
        Ok(self.all(Kind::Timer, namespace, |record| match record {
            Record::Timer(timer) => Some(timer),
            _ => None,
        }))
    }

    fn delete_timer(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        self.delete(scoped(Kind::Timer, namespace, name), ("timer", name))
    }
}

impl MqTriggerStore for ClusterStore {
    fn create_mq_trigger(&self, trigger: &MqTrigger) -> Result<(), StoreError> {
        self.create(
            scoped(Kind::MqTrigger, &trigger.namespace, &trigger.name),
            trigger,
            Record::MqTrigger(trigger.clone()),
            ("queue trigger", &trigger.name),
            || self.function_exists(&trigger.namespace, &trigger.function),
        )
    }

    fn mq_triggers(&self, namespace: Option<&Namespace>) -> Result<Vec<MqTrigger>, StoreError> {
        Ok(self.all(Kind::MqTrigger, namespace, |record| match record {
            Record::MqTrigger(trigger) => Some(trigger),
            _ => None,
        }))
    }

    fn delete_mq_trigger(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        self.delete(
            scoped(Kind::MqTrigger, namespace, name),
            ("queue trigger", name),
        )
    }
}

impl ClusterStore {
    fn namespace_key(namespace: &Namespace) -> String {
        format!("{}{namespace}", Kind::Namespace.prefix())
    }

    fn token_record_key(id: &str) -> String {
        format!("{}{id}", Kind::ApiToken.prefix())
    }

    /// Removes `namespace` from every token that lists it (deleting those that reach nothing
    /// else): after a namespace's delete, and again before it is created, so that a delete cut
    /// short part-way never lets an old token reach a new namespace of the same name.
    fn forget_in_tokens(&self, namespace: &Namespace) -> Result<(), StoreError> {
        let (kept, deleted) = gust_store::forget_namespace_in_tokens(self.tokens()?, namespace);
        for token in kept {
            let key = Self::token_record_key(&token.id);
            let bytes = encode(&token);
            self.write(
                &key,
                Some(Record::ApiToken(Box::new(token))),
                Write::Put(bytes),
            )?;
        }
        for id in deleted {
            match self.delete_token(&id) {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn namespace_user(&self, namespace: &Namespace) -> Option<String> {
        let first = |kind: Kind, what: &str| {
            let prefix = format!("{}{namespace}.", kind.prefix());
            self.lock()
                .records
                .range(prefix.clone()..)
                .next()
                .filter(|(key, _)| key.starts_with(&prefix))
                .map(|(key, _)| format!("{what} {}", &key[prefix.len()..]))
        };
        let values = |kind: ValueKind| {
            let prefix = format!("{}{}.{namespace}.", Kind::Values.prefix(), kind.noun());
            self.lock()
                .records
                .range(prefix.clone()..)
                .next()
                .filter(|(key, _)| key.starts_with(&prefix))
                .map(|(key, _)| format!("{} {}", kind.noun(), &key[prefix.len()..]))
        };
        first(Kind::Function, "function")
            .or_else(|| first(Kind::Route, "route"))
            .or_else(|| first(Kind::Timer, "timer"))
            .or_else(|| first(Kind::MqTrigger, "queue trigger"))
            .or_else(|| values(ValueKind::Secret))
            .or_else(|| values(ValueKind::Config))
    }
}

impl AccessStore for ClusterStore {
    fn create_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError> {
        let exists = || StoreError::AlreadyExists {
            kind: "namespace",
            name: record.name.to_string(),
        };
        if record.name == Namespace::default() {
            return Err(exists());
        }
        let key = Self::namespace_key(&record.name);
        if self.get(&key).is_some() {
            return Err(exists());
        }
        self.forget_in_tokens(&record.name)?;
        let name =
            Name::parse("namespace", record.name.as_str()).expect("a namespace is a valid name");
        self.create(
            key,
            record,
            Record::Namespace(record.clone()),
            ("namespace", &name),
            || Ok(()),
        )
    }

    fn update_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError> {
        let key = Self::namespace_key(&record.name);
        let bytes = encode(record);
        self.checked(&key, || {
            // `default` is stored once it is given quotas.
            if record.name != Namespace::default() && self.get(&key).is_none() {
                return Err(StoreError::NotFound {
                    kind: "namespace",
                    name: record.name.to_string(),
                });
            }
            Ok(Some((Record::Namespace(record.clone()), bytes.clone())))
        })
    }

    fn namespace_record(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceRecord>, StoreError> {
        if *namespace == Namespace::default() {
            return Ok(Some(match self.get(&Self::namespace_key(namespace)) {
                Some(Record::Namespace(record)) => record,
                _ => NamespaceRecord::default_namespace(),
            }));
        }
        Ok(match self.get(&Self::namespace_key(namespace)) {
            Some(Record::Namespace(record)) => Some(record),
            _ => None,
        })
    }

    fn namespace_records(&self) -> Result<Vec<NamespaceRecord>, StoreError> {
        let stored = self.all(Kind::Namespace, None, |record| match record {
            Record::Namespace(record) => Some(record),
            _ => None,
        });
        Ok(gust_store::with_default_first(stored))
    }

    fn delete_namespace(&self, namespace: &Namespace) -> Result<(), StoreError> {
        if *namespace == Namespace::default() {
            return Err(StoreError::InUse {
                kind: "namespace",
                name: namespace.to_string(),
                user: "Gust itself (default always exists)".into(),
            });
        }
        let key = Self::namespace_key(namespace);
        self.checked(&key, || {
            if self.get(&key).is_none() {
                return Err(StoreError::NotFound {
                    kind: "namespace",
                    name: namespace.to_string(),
                });
            }
            if let Some(user) = self.namespace_user(namespace) {
                return Err(StoreError::InUse {
                    kind: "namespace",
                    name: namespace.to_string(),
                    user,
                });
            }
            Ok(None)
        })?;
        self.forget_in_tokens(namespace)
    }

    fn create_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        let key = Self::token_record_key(&token.id);
        self.create(
            key,
            token,
            Record::ApiToken(Box::new(token.clone())),
            ("token", &token.name),
            || match self.tokens()?.iter().any(|t| t.name == token.name) {
                true => Err(StoreError::AlreadyExists {
                    kind: "token",
                    name: token.name.to_string(),
                }),
                false => Ok(()),
            },
        )
    }

    fn token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        Ok(match self.get(&Self::token_record_key(id)) {
            Some(Record::ApiToken(token)) => Some(*token),
            _ => None,
        })
    }

    fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        Ok(self.all(Kind::ApiToken, None, |record| match record {
            Record::ApiToken(token) => Some(*token),
            _ => None,
        }))
    }

    fn delete_token(&self, id: &str) -> Result<(), StoreError> {
        let key = Self::token_record_key(id);
        let Some(revision) = self.lock().records.get(&key).map(|(revision, _)| *revision) else {
            return Err(StoreError::NotFound {
                kind: "token",
                name: id.to_owned(),
            });
        };
        self.write(&key, None, Write::Delete(revision))
    }
}

fn values_key(kind: ValueKind, namespace: &Namespace, name: &Name) -> String {
    format!(
        "{}{}.{namespace}.{name}",
        Kind::Values.prefix(),
        kind.noun()
    )
}

impl ValueStore for ClusterStore {
    fn create_values(&self, set: &ValueSet) -> Result<(), StoreError> {
        self.create(
            values_key(set.kind, &set.namespace, &set.name),
            set,
            Record::Values(Box::new(set.clone())),
            (set.kind.noun(), &set.name),
            || Ok(()),
        )
    }

    fn update_values(&self, set: &ValueSet) -> Result<(), StoreError> {
        let key = values_key(set.kind, &set.namespace, &set.name);
        let bytes = encode(set);
        self.checked(&key, || match self.get(&key) {
            Some(Record::Values(stored)) if stored.version + 1 == set.version => {
                Ok(Some((Record::Values(Box::new(set.clone())), bytes.clone())))
            }
            Some(_) => Err(StoreError::Changed {
                kind: set.kind.noun(),
                name: set.name.to_string(),
            }),
            None => Err(StoreError::NotFound {
                kind: set.kind.noun(),
                name: set.name.to_string(),
            }),
        })
    }

    fn values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<Option<ValueSet>, StoreError> {
        Ok(match self.get(&values_key(kind, namespace, name)) {
            Some(Record::Values(set)) => Some(*set),
            _ => None,
        })
    }

    fn value_sets(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
    ) -> Result<Vec<ValueSet>, StoreError> {
        let prefix = format!("{}{}.{namespace}.", Kind::Values.prefix(), kind.noun());
        Ok(self
            .lock()
            .records
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, (_, record))| match record {
                Record::Values(set) => Some((**set).clone()),
                _ => None,
            })
            .collect())
    }

    fn delete_values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<(), StoreError> {
        let key = values_key(kind, namespace, name);
        self.checked(&key, || {
            if self.get(&key).is_none() {
                return Err(StoreError::NotFound {
                    kind: kind.noun(),
                    name: name.to_string(),
                });
            }
            let functions = self.functions(Some(namespace))?;
            if let Some(user) = gust_store::mounted_by(&functions, kind, namespace, name) {
                return Err(StoreError::InUse {
                    kind: kind.noun(),
                    name: name.to_string(),
                    user,
                });
            }
            Ok(None)
        })
    }
}
