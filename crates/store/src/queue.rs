//! The asynchronous invocation queue and timers in the embedded store.
//!
//! Tables (keys sort so that range scans answer the questions asked):
//! - `invocations`: id → the invocation (JSON).
//! - `invocation_requests`: id → its request (a length-prefixed JSON head, then the body).
//! - `async_ready`: `<due ms, 13 digits>/<id>` for pending invocations: what is due next.
//! - `async_running`: ids with an attempt in flight; at start they become due again.
//! - `dead_letters`: `<namespace>/<function>/<id>` for dead and expired invocations.
//! - `async_finished`: `<finished ms, 13 digits>/<id>` for ended invocations that are not dead
//!   letters (succeeded, or re-driven): what retention may delete, oldest first.
//! - `timers`: `<namespace>/<name>` → the timer; `timer_ticks`: the same key → the last tick
//!   enqueued, so that no tick is enqueued twice; `timer_status`: the same key → what its
//!   ticks came to (counts, last error).
//! - `async_open`: `<namespace>/<function>` → invocations pending or running (a function's
//!   queue depth, which an enqueue may not exceed).
//! - `async_dead_count`: `<namespace>/<function>` → its dead letters (the cap's count);
//!   `async_dead_by_time`: `<dead ms, 13 digits>/<id>`: what dead-letter retention deletes.
//! - `async_totals`: `request_bytes` and `record_bytes` → bytes of every stored request and
//!   invocation record (finished ones keep their response until retention deletes them):
//!   together, what the byte budget bounds; `version` marks the counters as built (stores
//!   written before them are counted at open).
//! - `async_ended`: `<namespace>/succeeded` and `<namespace>/failed` → invocations that ended
//!   so, ever (counted from the version that added them).
//!
//! Every count is kept in the same transaction as the records it counts, so it can never
//! drift from them, whatever a crash interrupts.

use std::collections::HashMap;

use gust_model::{
    AsyncInvocation, AsyncSource, InvocationState, Name, Namespace, StoredRequest, Timer,
    TimerStatus,
};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::embedded::{decode, encode, scoped_key};
use crate::{
    AsyncCounts, DeadLetterSweep, EmbeddedStore, InvocationStore, QueueBounds, QueueChange,
    QueueFull, QueueOutcome, StoreError, TimerStore,
};

pub(crate) const INVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invocations");
pub(crate) const INVOCATION_REQUESTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("invocation_requests");
pub(crate) const ASYNC_READY: TableDefinition<&str, ()> = TableDefinition::new("async_ready");
pub(crate) const ASYNC_RUNNING: TableDefinition<&str, ()> = TableDefinition::new("async_running");
pub(crate) const DEAD_LETTERS: TableDefinition<&str, ()> = TableDefinition::new("dead_letters");
pub(crate) const ASYNC_FINISHED: TableDefinition<&str, ()> = TableDefinition::new("async_finished");
pub(crate) const TIMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("timers");
pub(crate) const TIMER_TICKS: TableDefinition<&str, u64> = TableDefinition::new("timer_ticks");
const ASYNC_OPEN: TableDefinition<&str, u64> = TableDefinition::new("async_open");
const DEAD_COUNT: TableDefinition<&str, u64> = TableDefinition::new("async_dead_count");
const DEAD_BY_TIME: TableDefinition<&str, ()> = TableDefinition::new("async_dead_by_time");
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("async_totals");
const TIMER_STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("timer_status");
const ASYNC_ENDED: TableDefinition<&str, u64> = TableDefinition::new("async_ended");
const REQUEST_BYTES: &str = "request_bytes";
const RECORD_BYTES: &str = "record_bytes";
const COUNTERS_VERSION: &str = "version";
/// Version 2 counts the invocation records' bytes too.
const COUNTERS_BUILT: u64 = 2;

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    for table in [INVOCATIONS, INVOCATION_REQUESTS, TIMERS, TIMER_STATUS] {
        tx.open_table(table)?;
    }
    for table in [
        ASYNC_READY,
        ASYNC_RUNNING,
        DEAD_LETTERS,
        ASYNC_FINISHED,
        DEAD_BY_TIME,
    ] {
        tx.open_table(table)?;
    }
    for table in [TIMER_TICKS, ASYNC_OPEN, DEAD_COUNT, TOTALS, ASYNC_ENDED] {
        tx.open_table(table)?;
    }
    let built = tx
        .open_table(TOTALS)?
        .get(COUNTERS_VERSION)?
        .is_some_and(|v| v.value() >= COUNTERS_BUILT);
    if !built {
        rebuild_counters(tx)?;
    }
    Ok(())
}

/// Counts what a store written before these counters existed holds (once, at open).
fn rebuild_counters(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.delete_table(ASYNC_OPEN)?;
    tx.delete_table(DEAD_COUNT)?;
    tx.delete_table(DEAD_BY_TIME)?;
    tx.delete_table(TOTALS)?;
    let (invocations, record_bytes): (Vec<AsyncInvocation>, u64) = {
        let table = tx.open_table(INVOCATIONS)?;
        let mut all = Vec::new();
        let mut bytes = 0;
        for entry in table.iter()? {
            let (key, value) = entry?;
            bytes += value.value().len() as u64;
            all.push(decode(key.value(), value.value())?);
        }
        (all, bytes)
    };
    for invocation in &invocations {
        count(tx, invocation, 1)?;
    }
    let bytes: u64 = {
        let table = tx.open_table(INVOCATION_REQUESTS)?;
        let mut sum = 0;
        for entry in table.iter()? {
            sum += entry?.1.value().len() as u64;
        }
        sum
    };
    let mut totals = tx.open_table(TOTALS)?;
    totals.insert(REQUEST_BYTES, bytes)?;
    totals.insert(RECORD_BYTES, record_bytes)?;
    totals.insert(COUNTERS_VERSION, COUNTERS_BUILT)?;
    Ok(())
}

fn function_key(invocation: &AsyncInvocation) -> String {
    format!("{}/{}", invocation.namespace, invocation.function)
}

fn dead_time_key(invocation: &AsyncInvocation) -> String {
    let at = invocation
        .finished_at_ms
        .unwrap_or(invocation.updated_at_ms)
        .max(invocation.updated_at_ms);
    ready_key(at, &invocation.id)
}

/// Adds `delta` (1 or -1) to a counter, removing it at zero.
fn add(
    tx: &WriteTransaction,
    table: TableDefinition<&str, u64>,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(table)?;
    let current = table.get(key)?.map_or(0, |v| v.value());
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        table.remove(key)?;
    } else {
        table.insert(key, next)?;
    }
    Ok(())
}

/// Counts (`delta` 1) or uncounts (-1) an invocation in its function's open and dead-letter
/// counters and the dead-letter time index.
fn count(
    tx: &WriteTransaction,
    invocation: &AsyncInvocation,
    delta: i64,
) -> Result<(), StoreError> {
    let key = function_key(invocation);
    if matches!(
        invocation.state,
        InvocationState::Pending | InvocationState::Running
    ) {
        add(tx, ASYNC_OPEN, &key, delta)?;
    }
    if invocation.is_dead_letter() {
        add(tx, DEAD_COUNT, &key, delta)?;
        let mut by_time = tx.open_table(DEAD_BY_TIME)?;
        let time_key = dead_time_key(invocation);
        if delta > 0 {
            by_time.insert(time_key.as_str(), ())?;
        } else {
            by_time.remove(time_key.as_str())?;
        }
    }
    Ok(())
}

fn store_request(tx: &WriteTransaction, id: &str, encoded: &[u8]) -> Result<(), StoreError> {
    let replaced = tx
        .open_table(INVOCATION_REQUESTS)?
        .insert(id, encoded)?
        .map_or(0, |old| old.value().len() as i64);
    add(tx, TOTALS, REQUEST_BYTES, encoded.len() as i64 - replaced)
}

fn drop_request(tx: &WriteTransaction, id: &str) -> Result<(), StoreError> {
    let removed = tx
        .open_table(INVOCATION_REQUESTS)?
        .remove(id)?
        .map_or(0, |old| old.value().len() as i64);
    add(tx, TOTALS, REQUEST_BYTES, -removed)
}

/// Deletes an invocation, its request and its index entries.
fn delete(tx: &WriteTransaction, old: &AsyncInvocation) -> Result<(), StoreError> {
    unindex(tx, old)?;
    remove_record(tx, &old.id)?;
    drop_request(tx, &old.id)
}

/// Removes an invocation's record (not its indexes), uncounting its bytes.
fn remove_record(tx: &WriteTransaction, id: &str) -> Result<(), StoreError> {
    let removed = tx
        .open_table(INVOCATIONS)?
        .remove(id)?
        .map_or(0, |old| old.value().len() as i64);
    add(tx, TOTALS, RECORD_BYTES, -removed)
}

fn ready_key(due_ms: u64, id: &str) -> String {
    format!("{due_ms:013}/{id}")
}

/// Ended and not a dead letter: kept for `invocation get` until retention removes it.
fn finished_key(invocation: &AsyncInvocation) -> Option<String> {
    (invocation.state.is_terminal() && !invocation.is_dead_letter()).then(|| {
        let at = invocation
            .finished_at_ms
            .unwrap_or(invocation.updated_at_ms)
            .max(invocation.updated_at_ms);
        ready_key(at, &invocation.id)
    })
}

fn dead_letter_key(invocation: &AsyncInvocation) -> String {
    format!(
        "{}/{}/{}",
        invocation.namespace, invocation.function, invocation.id
    )
}

/// A request as bytes: its JSON head, length-prefixed, then its body.
pub fn encode_request(request: &StoredRequest) -> Vec<u8> {
    let head = encode(request);
    let mut out = Vec::with_capacity(4 + head.len() + request.body.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&request.body);
    out
}

/// What [`encode_request`] wrote; `key` names it in an error.
pub fn decode_request(key: &str, bytes: &[u8]) -> Result<StoredRequest, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: key.to_owned(),
        source: serde::de::Error::custom("truncated request record"),
    };
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let head = bytes.get(4..4 + len).ok_or_else(corrupt)?;
    let mut request: StoredRequest = decode(key, head)?;
    request.body = bytes[4 + len..].to_vec();
    Ok(request)
}

/// Removes an invocation's index entries for the state it was in.
fn unindex(tx: &WriteTransaction, old: &AsyncInvocation) -> Result<(), StoreError> {
    count(tx, old, -1)?;
    match old.state {
        InvocationState::Pending => {
            if let Some(due) = old.next_attempt_at_ms {
                tx.open_table(ASYNC_READY)?
                    .remove(ready_key(due, &old.id).as_str())?;
            }
        }
        InvocationState::Running => {
            tx.open_table(ASYNC_RUNNING)?.remove(old.id.as_str())?;
        }
        _ => {}
    }
    if old.is_dead_letter() {
        tx.open_table(DEAD_LETTERS)?
            .remove(dead_letter_key(old).as_str())?;
    }
    if let Some(key) = finished_key(old) {
        tx.open_table(ASYNC_FINISHED)?.remove(key.as_str())?;
    }
    Ok(())
}

/// Adds the index entries of an invocation's (new) state.
fn index(tx: &WriteTransaction, new: &AsyncInvocation) -> Result<(), StoreError> {
    count(tx, new, 1)?;
    match new.state {
        InvocationState::Pending => {
            let due = new.next_attempt_at_ms.unwrap_or(new.updated_at_ms);
            tx.open_table(ASYNC_READY)?
                .insert(ready_key(due, &new.id).as_str(), ())?;
        }
        InvocationState::Running => {
            tx.open_table(ASYNC_RUNNING)?.insert(new.id.as_str(), ())?;
        }
        _ => {}
    }
    if new.is_dead_letter() {
        tx.open_table(DEAD_LETTERS)?
            .insert(dead_letter_key(new).as_str(), ())?;
    }
    if let Some(key) = finished_key(new) {
        tx.open_table(ASYNC_FINISHED)?.insert(key.as_str(), ())?;
    }
    Ok(())
}

fn put(tx: &WriteTransaction, invocation: &AsyncInvocation) -> Result<(), StoreError> {
    let mut table = tx.open_table(INVOCATIONS)?;
    let (old, old_len): (Option<AsyncInvocation>, i64) = match table.get(invocation.id.as_str())? {
        Some(value) => (
            Some(decode(&invocation.id, value.value())?),
            value.value().len() as i64,
        ),
        None => (None, 0),
    };
    let encoded = encode(invocation);
    table.insert(invocation.id.as_str(), encoded.as_slice())?;
    drop(table);
    // Finished invocations keep their record (and response) for the retention: they count
    // against the byte budget as much as waiting requests do.
    add(tx, TOTALS, RECORD_BYTES, encoded.len() as i64 - old_len)?;
    let ended =
        old.as_ref().is_some_and(|old| !old.state.is_terminal()) && invocation.state.is_terminal();
    if let Some(old) = old {
        unindex(tx, &old)?;
    }
    index(tx, invocation)?;
    if ended {
        add(
            tx,
            ASYNC_ENDED,
            &ended_key(&invocation.namespace, invocation.state),
            1,
        )?;
    }
    if let AsyncSource::Timer { timer, .. } = &invocation.source {
        let key = crate::embedded::scoped_key(&invocation.namespace, timer);
        update_timer_status(tx, &key, false, |status| status.observe(invocation, ended))?;
    }
    Ok(())
}

/// Deletes what the queue counts for a namespace being deleted (its ended invocations, its
/// timers' statuses), in the deleting transaction: a namespace made again under its name
/// starts from nothing.
pub(crate) fn forget_namespace(
    tx: &WriteTransaction,
    namespace: &Namespace,
) -> Result<(), StoreError> {
    let mut ended = tx.open_table(ASYNC_ENDED)?;
    for state in [InvocationState::Succeeded, InvocationState::Dead] {
        ended.remove(ended_key(namespace, state).as_str())?;
    }
    let prefix = format!("{namespace}/");
    let mut statuses = tx.open_table(TIMER_STATUS)?;
    let mut keys = Vec::new();
    for entry in statuses.range(prefix.as_str()..)? {
        let key = entry?.0.value().to_owned();
        if !key.starts_with(&prefix) {
            break;
        }
        keys.push(key);
    }
    for key in keys {
        statuses.remove(key.as_str())?;
    }
    Ok(())
}

fn ended_key(namespace: &Namespace, state: InvocationState) -> String {
    let how = match state {
        InvocationState::Succeeded => "succeeded",
        _ => "failed",
    };
    format!("{namespace}/{how}")
}

/// Applies `change` to a timer's status, storing it when `change` says it changed. A timer
/// without one gets one only when `create` (a tick enqueued): what ends after its timer was
/// deleted leaves nothing behind.
fn update_timer_status(
    tx: &WriteTransaction,
    key: &str,
    create: bool,
    change: impl FnOnce(&mut TimerStatus) -> bool,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(TIMER_STATUS)?;
    let mut status: TimerStatus = match table.get(key)? {
        Some(value) => decode(key, value.value())?,
        None if create => TimerStatus::default(),
        None => return Ok(()),
    };
    if change(&mut status) {
        table.insert(key, encode(&status).as_slice())?;
    }
    Ok(())
}

/// Whether storing `invocation` would take its function past its queue depth or the queue
/// past its byte budget.
/// The sum of a per-function counter (keys `<namespace>/<function>`) over a namespace's
/// functions.
fn namespace_total(
    counters: &impl ReadableTable<&'static str, u64>,
    namespace: &Namespace,
) -> Result<u64, StoreError> {
    let prefix = format!("{namespace}/");
    let mut total = 0;
    for entry in counters.range(prefix.as_str()..)? {
        let (key, count) = entry?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        total += count.value();
    }
    Ok(total)
}

fn over_bounds(
    tx: &WriteTransaction,
    invocation: &AsyncInvocation,
    adding: usize,
    bounds: &QueueBounds,
) -> Result<Option<QueueFull>, StoreError> {
    let open = tx
        .open_table(ASYNC_OPEN)?
        .get(function_key(invocation).as_str())?
        .map_or(0, |v| v.value());
    if open >= bounds.per_function {
        return Ok(Some(QueueFull::FunctionDepth {
            limit: bounds.per_function,
        }));
    }
    if let Some(limit) = bounds.per_namespace {
        let open = namespace_total(&tx.open_table(ASYNC_OPEN)?, &invocation.namespace)?;
        if open >= limit {
            return Ok(Some(QueueFull::NamespaceDepth { limit }));
        }
    }
    let stored = {
        let totals = tx.open_table(TOTALS)?;
        let read = |key: &str| totals.get(key).map(|v| v.map_or(0, |v| v.value()));
        read(REQUEST_BYTES)? + read(RECORD_BYTES)?
    };
    if stored.saturating_add(adding as u64) > bounds.stored_bytes {
        return Ok(Some(QueueFull::StoreBudget {
            limit: bounds.stored_bytes,
        }));
    }
    Ok(None)
}

impl EmbeddedStore {
    fn apply_one(
        &self,
        tx: &WriteTransaction,
        change: &QueueChange,
    ) -> Result<QueueOutcome, StoreError> {
        match change {
            QueueChange::Enqueue {
                invocation,
                request,
                timer_tick,
                bounds,
            } => {
                let encoded = encode_request(request);
                // Both the request and the invocation's record are what it adds.
                let adding = encoded.len() + encode(invocation).len();
                if let Some(bounds) = bounds
                    && let Some(full) = over_bounds(tx, invocation, adding, bounds)?
                {
                    return Ok(QueueOutcome::Full(full));
                }
                if let Some((timer, tick_ms)) = timer_tick {
                    let mut ticks = tx.open_table(TIMER_TICKS)?;
                    let last = ticks.get(timer.as_str())?.map(|v| v.value());
                    if last.is_some_and(|last| last >= *tick_ms) {
                        return Ok(QueueOutcome::DuplicateTick);
                    }
                    ticks.insert(timer.as_str(), tick_ms)?;
                    drop(ticks);
                    update_timer_status(tx, timer, true, |status| {
                        status.fired(*tick_ms);
                        true
                    })?;
                }
                if tx
                    .open_table(INVOCATIONS)?
                    .get(invocation.id.as_str())?
                    .is_some()
                {
                    return Err(StoreError::AlreadyExists {
                        kind: "invocation",
                        name: invocation.id.clone(),
                    });
                }
                store_request(tx, &invocation.id, &encoded)?;
                put(tx, invocation)?;
                Ok(QueueOutcome::Stored)
            }
            QueueChange::Update { invocation } => {
                if invocation.state == InvocationState::Succeeded {
                    // A finished invocation's request is no longer needed.
                    drop_request(tx, &invocation.id)?;
                }
                put(tx, invocation)?;
                Ok(QueueOutcome::Stored)
            }
        }
    }
}

impl InvocationStore for EmbeddedStore {
    fn apply_queue_changes(
        &self,
        changes: &[QueueChange],
    ) -> Result<Vec<Result<QueueOutcome, StoreError>>, StoreError> {
        self.write(|tx| {
            let mut outcomes = Vec::with_capacity(changes.len());
            for change in changes {
                // One bad change (a duplicate id) fails alone; a storage error fails the batch.
                match self.apply_one(tx, change) {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    Err(err @ StoreError::AlreadyExists { .. }) => outcomes.push(Err(err)),
                    Err(err) => return Err(err),
                }
            }
            Ok(outcomes)
        })
    }

    fn due_invocations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(AsyncInvocation, StoredRequest)>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let ready = tx.open_table(ASYNC_READY)?;
        let invocations = tx.open_table(INVOCATIONS)?;
        let requests = tx.open_table(INVOCATION_REQUESTS)?;
        let end = format!("{:013}0", now_ms); // past every key due at or before now
        let mut out = Vec::new();
        for entry in ready.range(..end.as_str())? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some((_, id)) = key.value().split_once('/') else {
                continue;
            };
            let Some(record) = invocations.get(id)? else {
                continue;
            };
            let invocation: AsyncInvocation = decode(id, record.value())?;
            let request = match requests.get(id)? {
                Some(bytes) => decode_request(id, bytes.value())?,
                None => continue,
            };
            out.push((invocation, request));
        }
        Ok(out)
    }

    fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let ready = tx.open_table(ASYNC_READY)?;
        Ok(ready
            .first()?
            .and_then(|(key, _)| key.value().get(..13)?.parse().ok()))
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        Ok(tx.open_table(ASYNC_READY)?.len()?)
    }

    fn async_counts(&self, namespace: &Namespace) -> Result<AsyncCounts, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let open = namespace_total(&tx.open_table(ASYNC_OPEN)?, namespace)?;
        let dead_letters = namespace_total(&tx.open_table(DEAD_COUNT)?, namespace)?;
        // Running ones are few (the dispatcher's concurrency): each is read for its namespace.
        let invocations = tx.open_table(INVOCATIONS)?;
        let mut running = 0;
        for entry in tx.open_table(ASYNC_RUNNING)?.iter()? {
            let (id, _) = entry?;
            if let Some(record) = invocations.get(id.value())?
                && decode::<AsyncInvocation>(id.value(), record.value())?.namespace == *namespace
            {
                running += 1;
            }
        }
        let ended = tx.open_table(ASYNC_ENDED)?;
        let count = |state| -> Result<u64, StoreError> {
            Ok(ended
                .get(ended_key(namespace, state).as_str())?
                .map_or(0, |v| v.value()))
        };
        Ok(AsyncCounts {
            open,
            running: Some(running),
            dead_letters,
            succeeded: Some(count(InvocationState::Succeeded)?),
            failed: Some(count(InvocationState::Dead)?),
        })
    }

    fn timer_statuses(
        &self,
        namespace: &Namespace,
    ) -> Result<HashMap<String, TimerStatus>, StoreError> {
        let prefix = format!("{namespace}/");
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(TIMER_STATUS)?;
        let mut statuses = HashMap::new();
        for entry in table.range(prefix.as_str()..)? {
            let (key, value) = entry?;
            let Some(name) = key.value().strip_prefix(&prefix) else {
                break;
            };
            statuses.insert(name.to_owned(), decode(key.value(), value.value())?);
        }
        Ok(statuses)
    }

    fn reset_timer_status(
        &self,
        namespace: &Namespace,
        name: &Name,
        since_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = crate::embedded::scoped_key(namespace, name);
        self.write(|tx| {
            let mut table = tx.open_table(TIMER_STATUS)?;
            match since_ms {
                Some(since) => {
                    table.insert(key.as_str(), encode(&TimerStatus::since(since)).as_slice())?
                }
                None => table.remove(key.as_str())?,
            };
            Ok(())
        })
    }

    fn invocation(&self, id: &str) -> Result<Option<AsyncInvocation>, StoreError> {
        self.read_one(INVOCATIONS, id)
    }

    fn invocation_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(INVOCATION_REQUESTS)?;
        table
            .get(id)?
            .map(|bytes| decode_request(id, bytes.value()))
            .transpose()
    }

    fn dead_letters(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<AsyncInvocation>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let index = tx.open_table(DEAD_LETTERS)?;
        let invocations = tx.open_table(INVOCATIONS)?;
        let prefix = match function {
            Some(function) => format!("{namespace}/{function}/"),
            None => format!("{namespace}/"),
        };
        let mut out = Vec::new();
        for entry in index.range(prefix.as_str()..)? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some(id) = key.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            let id = id.rsplit('/').next().unwrap_or(id);
            if let Some(record) = invocations.get(id)? {
                out.push(decode(id, record.value())?);
            }
        }
        Ok(out)
    }

    fn purge_dead_letters(&self, ids: &[String]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut purged = 0;
            for id in ids {
                let old: AsyncInvocation = {
                    let table = tx.open_table(INVOCATIONS)?;
                    match table.get(id.as_str())? {
                        Some(value) => decode(id, value.value())?,
                        None => continue,
                    }
                };
                if !old.is_dead_letter() {
                    continue;
                }
                delete(tx, &old)?;
                purged += 1;
            }
            Ok(purged)
        })
    }

    fn sweep_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.write(|tx| {
            let keys: Vec<String> = {
                let finished = tx.open_table(ASYNC_FINISHED)?;
                let end = format!("{before_ms:013}/");
                finished
                    .range(..end.as_str())?
                    .take(limit)
                    .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
                    .collect::<Result<_, _>>()?
            };
            for key in &keys {
                tx.open_table(ASYNC_FINISHED)?.remove(key.as_str())?;
                if let Some((_, id)) = key.split_once('/') {
                    remove_record(tx, id)?;
                    drop_request(tx, id)?;
                }
            }
            Ok(keys.len())
        })
    }

    fn sweep_dead_letters(
        &self,
        before_ms: u64,
        per_function: u64,
        limit: usize,
    ) -> Result<DeadLetterSweep, StoreError> {
        self.write(|tx| {
            let mut swept = DeadLetterSweep::default();
            let expired: Vec<String> = {
                let by_time = tx.open_table(DEAD_BY_TIME)?;
                let end = format!("{before_ms:013}/");
                by_time
                    .range(..end.as_str())?
                    .take(limit)
                    .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
                    .collect::<Result<_, _>>()?
            };
            for key in &expired {
                let id = key.split_once('/').map_or(key.as_str(), |(_, id)| id);
                match self.stored_invocation(tx, id)? {
                    Some(old) => delete(tx, &old)?,
                    None => {
                        tx.open_table(DEAD_BY_TIME)?.remove(key.as_str())?;
                    }
                }
                swept.expired += 1;
            }
            let over: Vec<(String, u64)> = {
                let counts = tx.open_table(DEAD_COUNT)?;
                let mut over = Vec::new();
                for entry in counts.iter()? {
                    let (key, count) = entry?;
                    if count.value() > per_function {
                        over.push((key.value().to_owned(), count.value() - per_function));
                    }
                }
                over
            };
            for (function, excess) in over {
                // Dead-letter keys sort by id, and ids (UUIDv7) by time: the oldest go first.
                let prefix = format!("{function}/");
                let oldest: Vec<String> = {
                    let index = tx.open_table(DEAD_LETTERS)?;
                    let mut ids = Vec::new();
                    for entry in index.range(prefix.as_str()..)? {
                        let (key, _) = entry?;
                        let Some(id) = key.value().strip_prefix(prefix.as_str()) else {
                            break;
                        };
                        ids.push(id.to_owned());
                        if ids.len() as u64 >= excess || swept.total() + ids.len() >= limit {
                            break;
                        }
                    }
                    ids
                };
                for id in oldest {
                    if let Some(old) = self.stored_invocation(tx, &id)? {
                        delete(tx, &old)?;
                        swept.over_cap += 1;
                    }
                }
            }
            Ok(swept)
        })
    }

    fn recover_running(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.write(|tx| {
            let ids: Vec<String> = {
                let running = tx.open_table(ASYNC_RUNNING)?;
                running
                    .iter()?
                    .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
                    .collect::<Result<_, _>>()?
            };
            for id in &ids {
                let record = tx
                    .open_table(INVOCATIONS)?
                    .get(id.as_str())?
                    .map(|v| v.value().to_vec());
                let Some(record) = record else {
                    tx.open_table(ASYNC_RUNNING)?.remove(id.as_str())?;
                    continue;
                };
                let mut invocation: AsyncInvocation = decode(id, &record)?;
                invocation.state = InvocationState::Pending;
                invocation.next_attempt_at_ms = Some(now_ms);
                invocation.updated_at_ms = now_ms;
                invocation.last_error = Some("lost: Gust stopped during the attempt".into());
                put(tx, &invocation)?;
            }
            Ok(ids.len())
        })
    }
}

impl EmbeddedStore {
    fn stored_invocation(
        &self,
        tx: &WriteTransaction,
        id: &str,
    ) -> Result<Option<AsyncInvocation>, StoreError> {
        let table = tx.open_table(INVOCATIONS)?;
        table
            .get(id)?
            .map(|value| decode(id, value.value()))
            .transpose()
    }
}

impl TimerStore for EmbeddedStore {
    fn create_timer(&self, timer: &Timer) -> Result<(), StoreError> {
        let key = scoped_key(&timer.namespace, &timer.name);
        self.write(|tx| {
            crate::embedded::require_function(tx, &timer.namespace, &timer.function)?;
            let mut table = tx.open_table(TIMERS)?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "timer",
                    name: timer.name.to_string(),
                });
            }
            table.insert(key.as_str(), encode(timer).as_slice())?;
            Ok(())
        })
    }

    fn timers(&self, namespace: Option<&Namespace>) -> Result<Vec<Timer>, StoreError> {
        self.read_all(TIMERS, namespace.map(|ns| format!("{ns}/")))
    }

    fn delete_timer(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        let key = scoped_key(namespace, name);
        self.write(|tx| {
            if tx.open_table(TIMERS)?.remove(key.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "timer",
                    name: name.to_string(),
                });
            }
            tx.open_table(TIMER_TICKS)?.remove(key.as_str())?;
            tx.open_table(TIMER_STATUS)?.remove(key.as_str())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use gust_model::{AsyncSource, DeadReason};

    use super::*;

    fn invocation(id: &str, state: InvocationState, at_ms: u64) -> AsyncInvocation {
        let mut invocation = AsyncInvocation::accepted(
            id.into(),
            Namespace::default(),
            Name::parse("function", "f").unwrap(),
            AsyncSource::Api,
            at_ms,
        );
        invocation.state = state;
        if state.is_terminal() {
            invocation.next_attempt_at_ms = None;
            invocation.finished_at_ms = Some(at_ms);
        }
        if state == InvocationState::Dead {
            invocation.reason = Some(DeadReason::FinalStatus);
        }
        invocation
    }

    fn enqueue(invocation: AsyncInvocation) -> QueueChange {
        QueueChange::Enqueue {
            invocation,
            request: StoredRequest {
                method: "POST".into(),
                uri: "/".into(),
                headers: vec![("x-a".into(), "b".into())],
                body: b"payload".to_vec(),
            },
            timer_tick: None,
            bounds: None,
        }
    }

    fn bounded(invocation: AsyncInvocation, per_function: u64, stored_bytes: u64) -> QueueChange {
        let QueueChange::Enqueue {
            invocation,
            request,
            timer_tick,
            ..
        } = enqueue(invocation)
        else {
            unreachable!("enqueue builds an Enqueue");
        };
        QueueChange::Enqueue {
            invocation,
            request,
            timer_tick,
            bounds: Some(QueueBounds {
                per_namespace: None,
                per_function,
                stored_bytes,
            }),
        }
    }

    fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap()
    }

    #[test]
    fn a_function_cannot_queue_past_its_depth_and_finished_work_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let outcomes = store
            .apply_queue_changes(&[
                bounded(invocation("a", InvocationState::Pending, 1), 2, 1 << 20),
                bounded(invocation("b", InvocationState::Pending, 1), 2, 1 << 20),
                bounded(invocation("c", InvocationState::Pending, 1), 2, 1 << 20),
            ])
            .unwrap();
        assert!(matches!(outcomes[1], Ok(QueueOutcome::Stored)));
        assert!(matches!(
            outcomes[2],
            Ok(QueueOutcome::Full(QueueFull::FunctionDepth { limit: 2 }))
        ));
        assert!(store.invocation("c").unwrap().is_none(), "nothing stored");
        let mut done = store.invocation("a").unwrap().unwrap();
        done.state = InvocationState::Succeeded;
        done.next_attempt_at_ms = None;
        store
            .apply_queue_changes(&[QueueChange::Update { invocation: done }])
            .unwrap();
        // The counts survive a reopen, and a finished invocation no longer counts.
        drop(store);
        let store = open(&dir);
        let outcomes = store
            .apply_queue_changes(&[bounded(
                invocation("c", InvocationState::Pending, 1),
                2,
                1 << 20,
            )])
            .unwrap();
        assert!(matches!(outcomes[0], Ok(QueueOutcome::Stored)));
    }

    #[test]
    fn the_queue_cannot_store_past_its_byte_budget_and_deleting_returns_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // What one stored invocation costs: its request and its record.
        let one = match enqueue(invocation("d0", InvocationState::Dead, 1)) {
            QueueChange::Enqueue {
                request,
                invocation,
                ..
            } => encode_request(&request).len() + encode(&invocation).len(),
            QueueChange::Update { .. } => unreachable!("enqueue builds an Enqueue"),
        } as u64;
        let budget = 3 * one + one / 2;
        let mut stored = 0;
        for i in 0..10 {
            let outcome = store
                .apply_queue_changes(&[bounded(
                    invocation(&format!("d{i}"), InvocationState::Dead, 1),
                    100,
                    budget,
                )])
                .unwrap();
            match outcome[0] {
                Ok(QueueOutcome::Stored) => stored += 1,
                Ok(QueueOutcome::Full(QueueFull::StoreBudget { .. })) => break,
                ref other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, 3);
        // A succeeded invocation keeps its record (not its request) until retention: it counts.
        let mut done = store.invocation("d0").unwrap().unwrap();
        done.state = InvocationState::Succeeded;
        done.reason = None;
        store
            .apply_queue_changes(&[QueueChange::Update { invocation: done }])
            .unwrap();
        let more = || bounded(invocation("more", InvocationState::Pending, 1), 100, budget);
        let outcome = store.apply_queue_changes(&[more()]).unwrap();
        assert!(
            matches!(outcome[0], Ok(QueueOutcome::Full(_))),
            "records count too"
        );
        assert_eq!(store.sweep_finished(u64::MAX / 2, 100).unwrap(), 1);
        let outcome = store.apply_queue_changes(&[more()]).unwrap();
        assert!(
            matches!(outcome[0], Ok(QueueOutcome::Stored)),
            "retention made room"
        );
        let ids: Vec<String> = (1..stored)
            .map(|i| format!("d{i}"))
            .chain(["more".to_owned()])
            .collect();
        assert_eq!(store.purge_dead_letters(&ids).unwrap(), stored - 1);
        let outcome = store
            .apply_queue_changes(&[bounded(
                invocation("after", InvocationState::Pending, 1),
                100,
                budget,
            )])
            .unwrap();
        assert!(matches!(outcome[0], Ok(QueueOutcome::Stored)));
    }

    #[test]
    fn a_namespaces_invocations_are_counted_by_state_and_no_other_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let in_namespace = |id: &str, namespace: &str, function: &str, state| {
            let mut invocation = invocation(id, state, 1_000);
            invocation.namespace = Namespace::parse(namespace).unwrap();
            invocation.function = Name::parse("function", function).unwrap();
            enqueue(invocation)
        };
        store
            .apply_queue_changes(&[
                in_namespace("p1", "team", "f", InvocationState::Pending),
                in_namespace("p2", "team", "g", InvocationState::Pending),
                in_namespace("r1", "team", "f", InvocationState::Pending),
                in_namespace("d1", "team", "g", InvocationState::Dead),
                // `team-b/...` sorts right after `team/...`'s keys and must not be counted.
                in_namespace("o1", "team-b", "f", InvocationState::Pending),
                in_namespace("o2", "team-b", "f", InvocationState::Dead),
            ])
            .unwrap();
        let mut running = store.invocation("r1").unwrap().unwrap();
        running.state = InvocationState::Running;
        running.attempts = 1;
        store
            .apply_queue_changes(&[QueueChange::Update {
                invocation: running,
            }])
            .unwrap();
        let team = Namespace::parse("team").unwrap();
        assert_eq!(
            store.async_counts(&team).unwrap(),
            AsyncCounts {
                open: 3,
                running: Some(1),
                dead_letters: 1,
                succeeded: Some(0),
                failed: Some(0),
            }
        );
        // Ending invocations counts each once; changing an ended one (a re-drive marks its
        // dead letter) counts nothing more.
        let ended = |id: &str, state| {
            let mut invocation = store.invocation(id).unwrap().unwrap();
            invocation.state = state;
            QueueChange::Update { invocation }
        };
        store
            .apply_queue_changes(&[
                ended("r1", InvocationState::Succeeded),
                ended("p1", InvocationState::Dead),
            ])
            .unwrap();
        let mut redriven = store.invocation("p1").unwrap().unwrap();
        redriven.redriven_to = Some("p1-again".into());
        store
            .apply_queue_changes(&[QueueChange::Update {
                invocation: redriven,
            }])
            .unwrap();
        assert_eq!(
            store.async_counts(&team).unwrap(),
            AsyncCounts {
                open: 1,
                running: Some(0),
                dead_letters: 1,
                succeeded: Some(1),
                failed: Some(1),
            }
        );
        // A namespace deleted takes its counts along; another's stay.
        store.write(|tx| forget_namespace(tx, &team)).unwrap();
        let counts = store.async_counts(&team).unwrap();
        assert_eq!((counts.succeeded, counts.failed), (Some(0), Some(0)));
        let other = Namespace::parse("team-b").unwrap();
        assert_eq!(store.async_counts(&other).unwrap().open, 1);
        assert_eq!(
            store.async_counts(&Namespace::default()).unwrap(),
            AsyncCounts {
                open: 0,
                running: Some(0),
                dead_letters: 0,
                succeeded: Some(0),
                failed: Some(0),
            }
        );
    }

    #[test]
    fn a_timers_status_counts_its_ticks_their_outcomes_and_keeps_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let timer = Name::parse("timer", "nightly").unwrap();
        let tick = |id: &str, tick_ms: u64| {
            let mut invocation = invocation(id, InvocationState::Pending, tick_ms);
            invocation.source = AsyncSource::Timer {
                timer: timer.clone(),
                tick_ms,
            };
            let QueueChange::Enqueue {
                invocation,
                request,
                ..
            } = enqueue(invocation)
            else {
                unreachable!("enqueue builds an Enqueue");
            };
            QueueChange::Enqueue {
                invocation,
                request,
                timer_tick: Some((format!("default/{timer}"), tick_ms)),
                bounds: None,
            }
        };
        let attempt = |id: &str, state, error: Option<&str>, at_ms: u64| {
            let mut invocation = store.invocation(id).unwrap().unwrap();
            invocation.state = state;
            invocation.attempts += 1;
            invocation.updated_at_ms = at_ms;
            invocation.last_error = error.map(str::to_owned);
            if state == InvocationState::Dead {
                invocation.reason = Some(DeadReason::AttemptsExhausted);
            }
            store
                .apply_queue_changes(&[QueueChange::Update { invocation }])
                .unwrap();
        };
        store
            .apply_queue_changes(&[tick("t1", 60_000), tick("t2", 120_000), tick("t3", 180_000)])
            .unwrap();
        // A tick enqueued again is refused and not counted.
        store
            .apply_queue_changes(&[tick("t2-again", 120_000)])
            .unwrap();
        attempt(
            "t1",
            InvocationState::Pending,
            Some("the function answered 500"),
            61_000,
        );
        attempt(
            "t1",
            InvocationState::Dead,
            Some("the function answered 503"),
            62_000,
        );
        attempt("t2", InvocationState::Succeeded, None, 121_000);
        // A re-drive of a tick's dead letter ending is not that tick again.
        let mut redrive = store.invocation("t1").unwrap().unwrap();
        redrive.id = "t1-redriven".into();
        redrive.state = InvocationState::Pending;
        redrive.reason = None;
        redrive.redriven_from = Some("t1".into());
        store.apply_queue_changes(&[enqueue(redrive)]).unwrap();
        attempt("t1-redriven", InvocationState::Dead, Some("again"), 63_000);
        let statuses = store.timer_statuses(&Namespace::default()).unwrap();
        assert_eq!(
            statuses.get("nightly"),
            Some(&TimerStatus {
                since_ms: 0,
                fired: 3,
                last_fired_ms: Some(180_000),
                succeeded: 1,
                failed: 1,
                last_error: Some("the function answered 503".into()),
                last_error_at_ms: Some(62_000),
            })
        );
        assert!(
            store
                .timer_statuses(&Namespace::parse("team").unwrap())
                .unwrap()
                .is_empty()
        );
        // A timer made again under the name: the old timer's tick ending later is not its.
        store
            .reset_timer_status(&Namespace::default(), &timer, Some(200_000))
            .unwrap();
        store.apply_queue_changes(&[tick("t4", 240_000)]).unwrap();
        attempt("t3", InvocationState::Succeeded, None, 300_000);
        attempt("t4", InvocationState::Succeeded, None, 300_000);
        let statuses = store.timer_statuses(&Namespace::default()).unwrap();
        let fresh = statuses.get("nightly").unwrap();
        assert_eq!((fresh.fired, fresh.succeeded), (1, 1), "{fresh:?}");
        // A deleted timer's tick ending later leaves nothing behind.
        store.apply_queue_changes(&[tick("t5", 300_000)]).unwrap();
        store
            .reset_timer_status(&Namespace::default(), &timer, None)
            .unwrap();
        attempt("t5", InvocationState::Succeeded, None, 301_000);
        assert!(
            store
                .timer_statuses(&Namespace::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dead_letters_past_their_retention_or_their_functions_cap_are_deleted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // Ids sort by time, as UUIDv7s do.
        let changes: Vec<QueueChange> = (0..6)
            .map(|i| {
                enqueue(invocation(
                    &format!("dl-{i}"),
                    InvocationState::Dead,
                    1_000 * (i + 1),
                ))
            })
            .collect();
        store.apply_queue_changes(&changes).unwrap();
        let swept = store.sweep_dead_letters(2_500, 100, 100).unwrap();
        assert_eq!(
            swept,
            DeadLetterSweep {
                expired: 2,
                over_cap: 0
            }
        );
        let swept = store.sweep_dead_letters(0, 3, 100).unwrap();
        assert_eq!(
            swept,
            DeadLetterSweep {
                expired: 0,
                over_cap: 1
            }
        );
        let left: Vec<String> = store
            .dead_letters(&Namespace::default(), None, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(left, ["dl-3", "dl-4", "dl-5"]);
        assert!(store.invocation_request("dl-2").unwrap().is_none());
        assert_eq!(store.sweep_dead_letters(0, 3, 100).unwrap().total(), 0);
    }

    #[test]
    fn retention_deletes_old_finished_invocations_but_never_dead_letters_or_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let changes = vec![
            enqueue(invocation("old", InvocationState::Succeeded, 1_000)),
            enqueue(invocation("new", InvocationState::Succeeded, 5_000)),
            enqueue(invocation("dead", InvocationState::Dead, 1_000)),
            enqueue(invocation("waiting", InvocationState::Pending, 1_000)),
        ];
        let outcomes = store.apply_queue_changes(&changes).unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(QueueOutcome::Stored)))
        );

        assert_eq!(store.sweep_finished(2_000, 100).unwrap(), 1);
        assert!(store.invocation("old").unwrap().is_none());
        assert!(store.invocation_request("old").unwrap().is_none());
        for kept in ["new", "dead", "waiting"] {
            assert!(store.invocation(kept).unwrap().is_some(), "{kept}");
        }
        assert_eq!(store.pending_count().unwrap(), 1);
        assert_eq!(
            store
                .dead_letters(&Namespace::default(), None, 10)
                .unwrap()
                .len(),
            1
        );

        // A re-driven dead letter leaves the list and becomes sweepable from then on.
        let mut redriven = store.invocation("dead").unwrap().unwrap();
        redriven.redriven_to = Some("again".into());
        redriven.updated_at_ms = 3_000;
        store
            .apply_queue_changes(&[QueueChange::Update {
                invocation: redriven,
            }])
            .unwrap();
        assert!(
            store
                .dead_letters(&Namespace::default(), None, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.sweep_finished(2_000, 100).unwrap(), 0);
        assert_eq!(store.sweep_finished(4_000, 100).unwrap(), 1);
        assert!(store.invocation("dead").unwrap().is_none());
        assert_eq!(
            store.sweep_finished(u64::MAX / 2, 100).unwrap(),
            1,
            "then the newer one"
        );
        assert!(store.invocation("waiting").unwrap().is_some());
    }
}
