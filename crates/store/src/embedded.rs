use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use gust_model::{
    Environment, Function, HOUR_MS, HourlyUsage, Name, Namespace, Route, UsageRecord, UsageTotals,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EnvironmentStore, FunctionStore, RouteStore, StoreError, UsagePruned, UsageStore};

// Values are JSON documents: readable with any redb tool and tolerant of added fields.
const ENVIRONMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("environments");
pub(crate) const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
pub(crate) const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
/// `<namespace>/<started at ms, 13 digits>/<invocation id>#<attempt>` → the record. The key
/// is what makes a record count once (see [`UsageStore::record_usage`] below).
const USAGE_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("usage_records");
/// `<namespace>/<hour start ms, 13 digits>/<function>` → that hour's totals.
const USAGE_HOURS: TableDefinition<&str, &[u8]> = TableDefinition::new("usage_hours");
/// `<invocation id>#<attempt>` → the record's key: a second index of usage records that data
/// directories of earlier builds hold. Dropped on open: it cost a B-tree insert per record, and
/// the record's own key already makes it count once.
const RETIRED_USAGE_KEYS: TableDefinition<&str, &str> = TableDefinition::new("usage_keys");

/// Metadata in one redb file. redb commits are atomic and fsynced, so a process killed at any
/// point reopens to the last committed state.
pub struct EmbeddedStore {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` only while it is being reopened.
    db: RwLock<Option<Database>>,
    /// A write failed with an I/O error (a full disk, say). redb then refuses every later
    /// transaction until the database is opened again, which the next call does: once space
    /// is back, writes work again without a restart.
    poisoned: AtomicBool,
}

/// The open database, held for the length of one transaction.
pub(crate) struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("DbGuard is only made when the database is open")
    }
}

pub(crate) fn scoped_key(namespace: &Namespace, name: &Name) -> String {
    format!("{namespace}/{name}")
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("metadata types serialize to JSON without failing")
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

/// Memory the embedded database may use to cache pages, unless told otherwise (the
/// database's own default is 1 GiB, which a busy store grows into and keeps).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Self::open_database(path, cache_bytes)?;
        Self::create_tables(&db)?;
        Ok(Self {
            path: path.to_owned(),
            cache_bytes,
            db: RwLock::new(Some(db)),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Opens (or creates) the file in redb's file format v3, upgrading an older file. Format
    /// 3 keeps the allocator state in a table written with each commit; with format 2, a
    /// database reopened after an I/O error (a full disk) could trip redb's allocator check
    /// when it was closed.
    fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
        let mut db = redb::Builder::new()
            .create_with_file_format_v3(true)
            .set_cache_size(cache_bytes)
            .create(path)?;
        db.upgrade()?;
        Ok(db)
    }

    fn create_tables(db: &Database) -> Result<(), StoreError> {
        let tx = db.begin_write()?;
        for table in [ENVIRONMENTS, FUNCTIONS, ROUTES, USAGE_RECORDS, USAGE_HOURS] {
            tx.open_table(table)?;
        }
        tx.delete_table(RETIRED_USAGE_KEYS)?;
        crate::queue::create_tables(&tx)?;
        crate::mq::create_tables(&tx)?;
        crate::access::create_tables(&tx)?;
        crate::values::create_tables(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The database for one transaction, reopened first if an I/O error poisoned it.
    pub(crate) fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().expect("the database lock is never poisoned");
        if guard.is_none() {
            return Err(StoreError::Database(
                "the database could not be reopened after an I/O error".into(),
            ));
        }
        Ok(DbGuard(guard))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self
            .db
            .write()
            .expect("the database lock is never poisoned");
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(()); // another caller reopened it
        }
        // redb holds a lock on the file: the old handle goes before the new one opens.
        drop(slot.take());
        let db = Self::open_database(&self.path, self.cache_bytes)?;
        *slot = Some(db);
        self.poisoned.store(false, Ordering::Release);
        tracing::warn!(path = %self.path.display(), "database reopened after an I/O error");
        Ok(())
    }

    /// Remembers that a failed write may have poisoned the database.
    fn note_failure(&self, err: &StoreError) {
        if matches!(err, StoreError::Database(_) | StoreError::Io { .. }) {
            self.poisoned.store(true, Ordering::Release);
        }
    }

    pub(crate) fn read_all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key_prefix: Option<String>,
    ) -> Result<Vec<T>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            if key_prefix
                .as_ref()
                .is_none_or(|p| key.value().starts_with(p.as_str()))
            {
                out.push(decode(key.value(), value.value())?);
            }
        }
        Ok(out)
    }

    pub(crate) fn read_one<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(table)?;
        table
            .get(key)?
            .map(|value| decode(key, value.value()))
            .transpose()
    }

    /// Runs `body` in one write transaction and commits only if it succeeds.
    pub(crate) fn write<T>(
        &self,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let attempt = (|| {
            let tx = db.begin_write()?;
            let result = body(&tx)?;
            tx.commit()?;
            Ok(result)
        })();
        drop(db);
        if let Err(err) = &attempt {
            self.note_failure(err);
        }
        attempt
    }
}

pub(crate) fn require_function(
    tx: &WriteTransaction,
    namespace: &Namespace,
    name: &Name,
) -> Result<(), StoreError> {
    let key = scoped_key(namespace, name);
    if tx.open_table(FUNCTIONS)?.get(key.as_str())?.is_none() {
        return Err(StoreError::NotFound {
            kind: "function",
            name: name.to_string(),
        });
    }
    Ok(())
}

fn require_environment(tx: &WriteTransaction, name: &Name) -> Result<(), StoreError> {
    if tx.open_table(ENVIRONMENTS)?.get(name.as_str())?.is_none() {
        return Err(StoreError::NotFound {
            kind: "environment",
            name: name.to_string(),
        });
    }
    Ok(())
}

impl EnvironmentStore for EmbeddedStore {
    fn create_environment(&self, env: &Environment) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(ENVIRONMENTS)?;
            if table.get(env.name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "environment",
                    name: env.name.to_string(),
                });
            }
            table.insert(env.name.as_str(), encode(env).as_slice())?;
            Ok(())
        })
    }

    fn put_environment(&self, env: &Environment) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(ENVIRONMENTS)?
                .insert(env.name.as_str(), encode(env).as_slice())?;
            Ok(())
        })
    }

    fn environment(&self, name: &Name) -> Result<Option<Environment>, StoreError> {
        self.read_one(ENVIRONMENTS, name.as_str())
    }

    fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        self.read_all(ENVIRONMENTS, None)
    }

    fn delete_environment(&self, name: &Name) -> Result<(), StoreError> {
        self.write(|tx| {
            let functions = tx.open_table(FUNCTIONS)?;
            for entry in functions.iter()? {
                let (key, value) = entry?;
                let function: Function = decode(key.value(), value.value())?;
                if function.current_revision().environment == *name {
                    return Err(StoreError::InUse {
                        kind: "environment",
                        name: name.to_string(),
                        user: format!("function {}", key.value()),
                    });
                }
            }
            let mut table = tx.open_table(ENVIRONMENTS)?;
            if table.remove(name.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "environment",
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }
}

impl FunctionStore for EmbeddedStore {
    fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        let key = scoped_key(&function.namespace, &function.name);
        self.write(|tx| {
            require_environment(tx, &function.current_revision().environment)?;
            let mut table = tx.open_table(FUNCTIONS)?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "function",
                    name: function.name.to_string(),
                });
            }
            table.insert(key.as_str(), encode(function).as_slice())?;
            Ok(())
        })
    }

    fn update_function(
        &self,
        namespace: &Namespace,
        name: &Name,
        change: &mut dyn FnMut(Function) -> Result<Function, StoreError>,
    ) -> Result<Function, StoreError> {
        let key = scoped_key(namespace, name);
        self.write(|tx| {
            let mut table = tx.open_table(FUNCTIONS)?;
            let current: Function = match table.get(key.as_str())? {
                Some(value) => decode(&key, value.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: "function",
                        name: name.to_string(),
                    });
                }
            };
            let updated = change(current)?;
            require_environment(tx, &updated.current_revision().environment)?;
            table.insert(key.as_str(), encode(&updated).as_slice())?;
            Ok(updated)
        })
    }

    fn function(&self, namespace: &Namespace, name: &Name) -> Result<Option<Function>, StoreError> {
        self.read_one(FUNCTIONS, &scoped_key(namespace, name))
    }

    fn functions(&self, namespace: Option<&Namespace>) -> Result<Vec<Function>, StoreError> {
        self.read_all(FUNCTIONS, namespace.map(|ns| format!("{ns}/")))
    }

    fn delete_function(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(FUNCTIONS)?;
            if table
                .remove(scoped_key(namespace, name).as_str())?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    kind: "function",
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }
}

impl RouteStore for EmbeddedStore {
    fn create_route(&self, route: &Route) -> Result<(), StoreError> {
        let key = scoped_key(&route.namespace, &route.name);
        self.write(|tx| {
            require_function(tx, &route.namespace, &route.function)?;
            let mut table = tx.open_table(ROUTES)?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "route",
                    name: route.name.to_string(),
                });
            }
            for entry in table.iter()? {
                let (existing_key, value) = entry?;
                let existing: Route = decode(existing_key.value(), value.value())?;
                if let Some(clash) =
                    StoreError::route_clash(route, &existing, existing_key.value().to_owned())
                {
                    return Err(clash);
                }
            }
            table.insert(key.as_str(), encode(route).as_slice())?;
            Ok(())
        })
    }

    fn routes(&self, namespace: Option<&Namespace>) -> Result<Vec<Route>, StoreError> {
        self.read_all(ROUTES, namespace.map(|ns| format!("{ns}/")))
    }

    fn delete_route(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(ROUTES)?;
            if table
                .remove(scoped_key(namespace, name).as_str())?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    kind: "route",
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }
}

/// Keys sort by time within a namespace: 13 digits hold Unix milliseconds until the year 2286.
fn time_key(namespace: &Namespace, ms: u64) -> String {
    format!("{namespace}/{ms:013}/")
}

/// Deletes up to `limit` entries of a table keyed by [`time_key`] whose time is before
/// `before_ms`, namespace by namespace; returns how many.
fn prune_by_time(
    table: &mut redb::Table<&str, &[u8]>,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    let mut from = String::new();
    while deleted < limit {
        let namespace = match table.range(from.as_str()..)?.next() {
            Some(entry) => {
                let (key, _) = entry?;
                key.value().split('/').next().unwrap_or_default().to_owned()
            }
            None => break,
        };
        let start = format!("{namespace}/");
        let end = format!("{namespace}/{before_ms:013}/");
        let keys: Vec<String> = table
            .range(start.as_str()..end.as_str())?
            .take(limit - deleted)
            .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
            .collect::<Result<_, _>>()?;
        for key in &keys {
            table.remove(key.as_str())?;
        }
        deleted += keys.len();
        // '0' follows '/', and no name has a character between them: past this namespace.
        from = format!("{namespace}0");
    }
    Ok(deleted)
}

impl UsageStore for EmbeddedStore {
    fn record_usage(&self, records: &[UsageRecord]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut stored = tx.open_table(USAGE_RECORDS)?;
            // A batch holds many records of few functions and hours: add them up first, then
            // read and write each hour's totals once.
            let mut batch_hours: BTreeMap<String, UsageTotals> = BTreeMap::new();
            let mut new = 0;
            for record in records {
                let record_key = format!(
                    "{}{}",
                    time_key(&record.namespace, record.started_at_ms),
                    record.key()
                );
                // An attempt is reported once, with its start time, by the executor that ran
                // it: the same record comes back only in a batch written again after an error,
                // under the same key. Put back, it changes nothing and is not added up again.
                if stored
                    .insert(record_key.as_str(), encode(record).as_slice())?
                    .is_some()
                {
                    continue;
                }
                let hour = record.started_at_ms - record.started_at_ms % HOUR_MS;
                let hour_key = format!("{}{}", time_key(&record.namespace, hour), record.function);
                batch_hours.entry(hour_key).or_default().add(record);
                new += 1;
            }
            let mut hours = tx.open_table(USAGE_HOURS)?;
            for (hour_key, added) in batch_hours {
                let mut totals: UsageTotals = match hours.get(hour_key.as_str())? {
                    Some(value) => decode(&hour_key, value.value())?,
                    None => UsageTotals::default(),
                };
                totals.merge(&added);
                hours.insert(hour_key.as_str(), encode(&totals).as_slice())?;
            }
            Ok(new)
        })
    }

    fn usage_hours(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
    ) -> Result<Vec<HourlyUsage>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(USAGE_HOURS)?;
        let first_hour = since_ms - since_ms % HOUR_MS;
        let start = time_key(namespace, first_hour);
        let end = format!("{namespace}0"); // '0' follows '/': past every key of the namespace
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (key, value) = entry?;
            let key = key.value();
            let mut parts = key.splitn(3, '/');
            let (Some(_), Some(hour), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if function.is_some_and(|f| f.as_str() != name) {
                continue;
            }
            let (Ok(hour_start_ms), Ok(function)) = (hour.parse(), Name::parse("function", name))
            else {
                continue;
            };
            out.push(HourlyUsage {
                namespace: namespace.clone(),
                function,
                hour_start_ms,
                totals: decode(key, value.value())?,
            });
        }
        Ok(out)
    }

    fn prune_usage(
        &self,
        records_before_ms: u64,
        hours_before_ms: u64,
        limit: usize,
    ) -> Result<UsagePruned, StoreError> {
        self.write(|tx| {
            let records =
                prune_by_time(&mut tx.open_table(USAGE_RECORDS)?, records_before_ms, limit)?;
            let hours = prune_by_time(&mut tx.open_table(USAGE_HOURS)?, hours_before_ms, limit)?;
            Ok(UsagePruned { records, hours })
        })
    }

    fn usage_records(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(USAGE_RECORDS)?;
        let start = time_key(namespace, since_ms);
        let end = format!("{namespace}0");
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            let record: UsageRecord = decode(key.value(), value.value())?;
            if function.is_none_or(|f| *f == record.function) {
                out.push(record);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use gust_model::{HOUR_MS, Name, Namespace, UsageRecord};

    use super::*;

    fn record(namespace: &str, function: &str, id: &str, attempt: u32, at_ms: u64) -> UsageRecord {
        UsageRecord {
            invocation_id: id.into(),
            attempt,
            namespace: Namespace::parse(namespace).unwrap(),
            function: Name::parse("function", function).unwrap(),
            revision: 1,
            trigger: "http".into(),
            started_at_ms: at_ms,
            wall_ms: 12,
            billed_ms: 10,
            memory_mb: 512,
            gb_seconds: 0.005,
            cpu_ms: 3.5,
            queue_ms: 0,
            cold_start_ms: 2,
            status: if attempt == 2 { 502 } else { 200 },
        }
    }

    #[test]
    fn the_retired_usage_index_is_dropped_and_stored_records_still_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        let base = 1_000 * HOUR_MS;
        let earlier = record("default", "f", "a", 1, base + 5);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert_eq!(
                store.record_usage(std::slice::from_ref(&earlier)).unwrap(),
                1
            );
        }
        // What an earlier build left: the index beside the records.
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(RETIRED_USAGE_KEYS)
                .unwrap()
                .insert("a#1", "default/0003600000005/a#1")
                .unwrap();
            tx.commit().unwrap();
        }

        let store = EmbeddedStore::open(&path).unwrap();
        let tables: Vec<String> = {
            let db = store.db().unwrap();
            let tx = db.begin_read().unwrap();
            tx.list_tables()
                .unwrap()
                .map(|t| redb::TableHandle::name(&t).to_owned())
                .collect()
        };
        assert!(!tables.contains(&"usage_keys".to_owned()), "{tables:?}");
        assert_eq!(store.record_usage(&[earlier]).unwrap(), 0);
        let hours = store
            .usage_hours(&Namespace::default(), None, base)
            .unwrap();
        assert_eq!(hours[0].totals.invocations, 1);
    }

    #[test]
    fn usage_counts_each_attempt_once_and_adds_up_by_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let base = 1_000 * HOUR_MS;
        let batch = [
            record("default", "f", "a", 1, base + 5),
            record("default", "f", "a", 2, base + 10),
            record("default", "g", "b", 1, base + HOUR_MS + 1),
            record("a-b", "f", "c", 1, base + 7),
        ];
        assert_eq!(store.record_usage(&batch).unwrap(), 4);
        // The same records again (a retried batch) add nothing.
        assert_eq!(store.record_usage(&batch[..2]).unwrap(), 0);

        let ns = Namespace::default();
        let hours = store.usage_hours(&ns, None, base).unwrap();
        assert_eq!(hours.len(), 2, "{hours:?}");
        assert_eq!(hours[0].function.as_str(), "f");
        assert_eq!(hours[0].hour_start_ms, base);
        assert_eq!(hours[0].totals.invocations, 2);
        assert_eq!(hours[0].totals.errors, 1);
        assert_eq!(hours[0].totals.billed_ms, 20);
        assert_eq!(hours[1].function.as_str(), "g");
        let g = Name::parse("function", "g").unwrap();
        assert_eq!(store.usage_hours(&ns, Some(&g), base).unwrap().len(), 1);
        assert!(
            store
                .usage_hours(&ns, None, base + 2 * HOUR_MS)
                .unwrap()
                .is_empty()
        );

        let records = store.usage_records(&ns, None, base, 100).unwrap();
        assert_eq!(records.len(), 3, "another namespace's records stay out");
        assert_eq!(records[0], batch[0]);
        assert_eq!(store.usage_records(&ns, None, base, 1).unwrap().len(), 1);
        assert_eq!(
            store.usage_records(&ns, None, base + 8, 100).unwrap().len(),
            2
        );
    }

    #[test]
    fn pruning_deletes_old_records_and_hours_in_every_namespace_and_changes_no_total() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let base = 1_000 * HOUR_MS;
        let batch = [
            record("a-b", "f", "x", 1, base + 1),
            record("default", "f", "a", 1, base + 5),
            record("default", "f", "b", 1, base + HOUR_MS + 5),
            record("default0", "f", "c", 1, base + 5),
            record("zz", "f", "d", 1, base + 3 * HOUR_MS),
        ];
        store.record_usage(&batch).unwrap();
        let ns = Namespace::default();
        let totals_before = store.usage_hours(&ns, None, 0).unwrap();

        // Records before the second hour go, in every namespace; hours stay.
        let pruned = store.prune_usage(base + HOUR_MS, 0, 100).unwrap();
        assert_eq!(
            pruned,
            UsagePruned {
                records: 3,
                hours: 0
            }
        );
        let left = store.usage_records(&ns, None, 0, 100).unwrap();
        assert_eq!(left, [batch[2].clone()]);
        assert_eq!(store.usage_hours(&ns, None, 0).unwrap(), totals_before);
        for other in ["a-b", "default0"] {
            let other = Namespace::parse(other).unwrap();
            assert!(
                store
                    .usage_records(&other, None, 0, 100)
                    .unwrap()
                    .is_empty()
            );
        }
        // A batch limit is kept, and a second call finishes the work.
        let pruned = store
            .prune_usage(u64::MAX / 2, base + 2 * HOUR_MS, 2)
            .unwrap();
        assert_eq!(
            pruned,
            UsagePruned {
                records: 2,
                hours: 2
            }
        );
        let pruned = store
            .prune_usage(u64::MAX / 2, base + 2 * HOUR_MS, 100)
            .unwrap();
        assert_eq!(pruned.hours, 2, "{pruned:?}");
        assert!(store.usage_hours(&ns, None, 0).unwrap().is_empty());
        let zz = Namespace::parse("zz").unwrap();
        assert_eq!(
            store.usage_hours(&zz, None, 0).unwrap().len(),
            1,
            "a later hour stays"
        );
    }
}
