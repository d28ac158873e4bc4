//! The metadata store traits over the `gust-metadata` key-value bucket.
//!
//! Every read is served from a local copy of the bucket that a watch keeps current, so the
//! request path (a route table, a function's current revision) never waits on NATS. Writes
//! go to NATS and are acknowledged by JetStream before they return:
//! - a function update is revision-checked: it reads the stored record with its revision,
//!   applies the change and writes only if nobody wrote in between, else it fails with
//!   [`StoreError::Changed`] (409): two nodes updating one function never lose one silently;
//! - a write that checks other records (a route against every route, a function against its
//!   environment, an environment's delete against its users) holds the cluster's metadata
//!   write lock and first waits until the local copy has every write made before it;
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
use gust_model::{Environment, Function, MqTrigger, Name, Namespace, Route, Timer};
use gust_store::{
    CodeStore, EnvironmentStore, FunctionStore, MqTriggerStore, RouteStore, StoreError, TimerStore,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::code::ClusterCode;
use crate::{CALL_TIMEOUT, Cluster, bridge::Bridge};

const METADATA_BUCKET: &str = "gust-metadata";
const LOCK_BUCKET: &str = "gust-locks";
const LOCK_KEY: &str = "metadata";
/// A lock whose holder died goes after this long.
const LOCK_EXPIRY: Duration = Duration::from_secs(15);
/// How often the watch checks that it keeps up with the bucket, and how long it may stay
/// behind before it is started again.
const STALL_CHECK: Duration = Duration::from_secs(1);
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Longest a write waits for the lock or for the local copy to catch up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

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
            Some(Kind::Token) | None => {}
        }
    }
}

/// The local copy of the bucket.
#[derive(Default)]
struct Replica {
    records: BTreeMap<String, (u64, Record)>,
    /// The highest bucket revision the watch has delivered.
    revision: u64,
    /// Keys this node is writing now, with the newest change the watch delivered for each
    /// meanwhile (revision, record or `None` for a delete), applied when the write ends.
    writing: HashMap<String, Option<(u64, Option<Record>)>>,
    /// The watch has delivered the bucket's content as it was when it started.
    loaded: bool,
    changes: MetadataChanges,
}

impl Replica {
    /// Applies a change unless the copy holds a newer one; returns whether it did.
    fn apply(&mut self, key: &str, revision: u64, record: Option<Record>) -> bool {
        if self
            .records
            .get(key)
            .is_some_and(|(held, _)| *held >= revision)
        {
            return false;
        }
        match record {
            Some(record) => {
                self.records.insert(key.to_owned(), (revision, record));
            }
            None => {
                self.records.remove(key);
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
    locks: kv::Store,
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
        let locks = cluster.bucket(LOCK_BUCKET, LOCK_EXPIRY)?;
        let store = Arc::new(Self {
            bridge: cluster.bridge.clone(),
            client: cluster.client.clone(),
            metadata: metadata.clone(),
            jetstream: cluster.jetstream.clone(),
            locks,
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
        self.lock().writing.insert(key.to_owned(), None);
        let (metadata, jetstream) = (self.metadata.clone(), self.jetstream.clone());
        let owned_key = key.to_owned();
        let result = self
            .bridge
            .wait(CALL_TIMEOUT, async move {
                write.run(&metadata, &jetstream, &owned_key).await
            })
            .and_then(|result| result);
        let mut copy = self.lock();
        let seen = copy.writing.remove(key).flatten();
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

    /// Runs `write` holding the cluster's metadata write lock, once the local copy has every
    /// write made before the lock was taken.
    fn locked<T>(&self, write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.connected()?;
        let (locks, metadata, copy) =
            (self.locks.clone(), self.metadata.clone(), self.copy.clone());
        let holder = Bytes::from(self.node_id.clone());
        let lock_revision = self
            .bridge
            .wait(LOCK_WAIT + CALL_TIMEOUT, async move {
                let deadline = Instant::now() + LOCK_WAIT;
                let revision = loop {
                    match locks.create(LOCK_KEY, holder.clone()).await {
                        Ok(revision) => break revision,
                        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                            if Instant::now() > deadline {
                                return Err(StoreError::Unavailable(
                                    "another node held the metadata write lock for 10s".into(),
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(err) => {
                            return Err(StoreError::Unavailable(format!(
                                "cannot take the metadata write lock: {err}"
                            )));
                        }
                    }
                };
                // Catch up with every write made before the lock was ours.
                let release = |revision| {
                    let locks = locks.clone();
                    async move {
                        let _ = locks.delete_expect_revision(LOCK_KEY, Some(revision)).await;
                    }
                };
                let last = match metadata.stream.get_info().await {
                    Ok(info) => info.state.last_sequence,
                    Err(err) => {
                        release(revision).await;
                        return Err(StoreError::Unavailable(format!(
                            "cannot read the metadata bucket: {err}"
                        )));
                    }
                };
                while copy.lock().expect("copy lock").revision < last {
                    if Instant::now() > deadline {
                        release(revision).await;
                        return Err(StoreError::Unavailable(
                            "this node's copy of the metadata is behind; try again".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(revision)
            })
            .and_then(|result| result)?;
        let result = write();
        let locks = self.locks.clone();
        let released = self.bridge.wait(CALL_TIMEOUT, async move {
            locks
                .delete_expect_revision(LOCK_KEY, Some(lock_revision))
                .await
        });
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!("cannot release the metadata write lock; it expires in 15s");
        }
        result
    }

    /// Creates `key` holding `value`; `kind` and `name` say what, for the error.
    fn create<T: Serialize>(
        &self,
        key: String,
        value: &T,
        record: Record,
        (kind, name): (&'static str, &Name),
    ) -> Result<(), StoreError> {
        if self.get(&key).is_some() {
            return Err(StoreError::AlreadyExists {
                kind,
                name: name.to_string(),
            });
        }
        self.write(&key, Some(record), Write::Create(encode(value)))
            .map_err(|err| match err {
                StoreError::AlreadyExists { .. } => StoreError::AlreadyExists {
                    kind,
                    name: name.to_string(),
                },
                other => other,
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
    /// Fails unless the key is still at this revision.
    Update(Bytes, u64),
    Put(Bytes),
    /// Fails unless the key is still at this revision.
    Delete(u64),
}

impl Write {
    /// Returns the key's new revision.
    async fn run(
        self,
        metadata: &kv::Store,
        jetstream: &async_nats::jetstream::Context,
        key: &str,
    ) -> Result<u64, StoreError> {
        let changed = || StoreError::Changed {
            kind: "record",
            name: key.to_owned(),
        };
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
            Write::Update(value, revision) => {
                metadata
                    .update(key, value, revision)
                    .await
                    .map_err(|err| match err.kind() {
                        kv::UpdateErrorKind::WrongLastRevision => changed(),
                        _ => failed(err.to_string()),
                    })
            }
            Write::Put(value) => metadata
                .put(key, value)
                .await
                .map_err(|err| failed(err.to_string())),
            Write::Delete(revision) => {
                // A delete marker published by hand rather than with the bucket's delete,
                // which does not say the marker's revision: the copy needs it to tell the
                // marker from an older value the watch may still bring.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("KV-Operation", "DEL");
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    revision.to_string().as_str(),
                );
                let ack = jetstream
                    .publish_with_headers(
                        format!("$KV.{METADATA_BUCKET}.{key}"),
                        headers,
                        Bytes::new(),
                    )
                    .await
                    .map_err(|err| failed(err.to_string()))?
                    .await;
                match ack {
                    Ok(ack) => Ok(ack.sequence),
                    Err(err) if err.to_string().contains("wrong last sequence") => Err(changed()),
                    Err(err) => Err(failed(err.to_string())),
                }
            }
        }
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
                    if let Ok(info) = metadata.stream.get_info().await
                        && info.state.last_sequence > applied
                    {
                        let (_, since) =
                            *behind.get_or_insert((info.state.last_sequence, Instant::now()));
                        if since.elapsed() >= STALL_LIMIT {
                            tracing::warn!("the metadata watch fell behind; starting it again");
                            break;
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

/// Applies one entry the watch delivered.
fn receive(copy: &Mutex<Replica>, changed: &Notify, entry: &kv::Entry) {
    let Some(kind) = Kind::of(&entry.key) else {
        return;
    };
    let record = match entry.operation {
        kv::Operation::Put => match kind.decode(&entry.key, &entry.value) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::error!(error = %err, "skipping an unreadable metadata record");
                None
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    let mut copy = copy.lock().expect("copy lock");
    copy.revision = copy.revision.max(entry.revision);
    if let Some(seen) = copy.writing.get_mut(&entry.key) {
        if seen
            .as_ref()
            .is_none_or(|(revision, _)| *revision < entry.revision)
        {
            *seen = Some((entry.revision, record));
        }
        return;
    }
    let deleted = record.is_none();
    if copy.apply(&entry.key, entry.revision, record) && copy.loaded {
        copy.changes.note(&entry.key, deleted);
        changed.notify_one();
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
        self.locked(|| {
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
            self.delete(
                format!("{}{name}", Kind::Environment.prefix()),
                ("environment", name),
            )
        })
    }
}

impl FunctionStore for ClusterStore {
    fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        self.code.share_revisions(function)?;
        self.locked(|| {
            self.environment_exists(&function.current_revision().environment)?;
            self.create(
                scoped(Kind::Function, &function.namespace, &function.name),
                function,
                Record::Function(Box::new(function.clone())),
                ("function", &function.name),
            )
        })
    }

    fn update_function(
        &self,
        namespace: &Namespace,
        name: &Name,
        change: &mut dyn FnMut(Function) -> Result<Function, StoreError>,
    ) -> Result<Function, StoreError> {
        self.connected()?;
        let key = scoped(Kind::Function, namespace, name);
        let metadata = self.metadata.clone();
        let read_key = key.clone();
        // Read from NATS, not the copy: an update made on another node a moment ago counts.
        let stored = self
            .bridge
            .wait(CALL_TIMEOUT, async move { metadata.entry(read_key).await })?
            .map_err(|err| StoreError::Unavailable(format!("cannot read {key}: {err}")))?
            .filter(|entry| entry.operation == kv::Operation::Put)
            .ok_or_else(|| StoreError::NotFound {
                kind: "function",
                name: name.to_string(),
            })?;
        let current: Function =
            serde_json::from_slice(&stored.value).map_err(|source| StoreError::Corrupt {
                key: key.clone(),
                source,
            })?;
        let updated = change(current)?;
        self.environment_exists(&updated.current_revision().environment)?;
        self.code.share_revisions(&updated)?;
        self.write(
            &key,
            Some(Record::Function(Box::new(updated.clone()))),
            Write::Update(encode(&updated), stored.revision),
        )
        .map_err(|err| match err {
            StoreError::Changed { .. } => StoreError::Changed {
                kind: "function",
                name: name.to_string(),
            },
            other => other,
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
        self.locked(|| self.delete(scoped(Kind::Function, namespace, name), ("function", name)))
    }
}

impl RouteStore for ClusterStore {
    fn create_route(&self, route: &Route) -> Result<(), StoreError> {
        self.locked(|| {
            self.function_exists(&route.namespace, &route.function)?;
            let key = scoped(Kind::Route, &route.namespace, &route.name);
            if self.get(&key).is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "route",
                    name: route.name.to_string(),
                });
            }
            for existing in self.routes(None)? {
                if existing.conflicts_with(route) {
                    return Err(StoreError::RouteConflict {
                        path: route.path.to_string(),
                        existing: format!("{}/{}", existing.namespace, existing.name),
                        existing_path: existing.path.to_string(),
                    });
                }
            }
            self.create(
                key,
                route,
                Record::Route(route.clone()),
                ("route", &route.name),
            )
        })
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
        self.locked(|| {
            self.function_exists(&timer.namespace, &timer.function)?;
            self.create(
                scoped(Kind::Timer, &timer.namespace, &timer.name),
                timer,
                Record::Timer(timer.clone()),
                ("timer", &timer.name),
            )
        })
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
        self.locked(|| {
            self.function_exists(&trigger.namespace, &trigger.function)?;
            self.create(
                scoped(Kind::MqTrigger, &trigger.namespace, &trigger.name),
                trigger,
                Record::MqTrigger(trigger.clone()),
                ("queue trigger", &trigger.name),
            )
        })
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
