//! Namespaces, API tokens and the audit log in the embedded store:
//! - `namespaces`: `<namespace>` → its record;
//! - `api_tokens`: `<token id>` → the token's record (a hash of its secret, never the secret);
//! - `audit`: `<at ms, 13 digits>/<sequence, 10 digits>` → one entry, oldest first.

use std::sync::atomic::{AtomicU64, Ordering};

use gust_model::{ApiToken, AuditEntry, Namespace, NamespaceRecord};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::embedded::{decode, encode};
use crate::{AccessStore, AuditStore, EmbeddedStore, StoreError};

const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("audit");

/// Tells apart entries written in the same millisecond.
static AUDIT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    for table in [NAMESPACES, API_TOKENS, AUDIT] {
        tx.open_table(table)?;
    }
    Ok(())
}

/// What a namespace still holds, if anything: a namespace is deleted empty.
pub(crate) fn namespace_user(
    tx: &WriteTransaction,
    namespace: &Namespace,
) -> Result<Option<String>, StoreError> {
    let prefix = format!("{namespace}/");
    for (table, kind) in [
        (crate::embedded::FUNCTIONS, "function"),
        (crate::embedded::ROUTES, "route"),
        (crate::queue::TIMERS, "timer"),
        (crate::mq::MQ_TRIGGERS, "queue trigger"),
    ] {
        let table = tx.open_table(table)?;
        let first = table.range(prefix.as_str()..)?.next().transpose()?;
        if let Some((key, _)) = first
            && key.value().starts_with(&prefix)
        {
            let name = &key.value()[prefix.len()..];
            return Ok(Some(format!("{kind} {name}")));
        }
    }
    crate::values::first_in_namespace(tx, namespace)
}

/// Every namespace from the stored records: `default` first (as stored once it has quotas,
/// else as it always exists), then the others.
pub fn with_default_first(stored: Vec<NamespaceRecord>) -> Vec<NamespaceRecord> {
    let (default, others): (Vec<_>, Vec<_>) = stored
        .into_iter()
        .partition(|record| record.name == Namespace::default());
    let mut records = vec![
        default
            .into_iter()
            .next()
            .unwrap_or_else(NamespaceRecord::default_namespace),
    ];
    records.extend(others);
    records
}

/// The tokens left once `namespace` is gone: a token that reached only it is deleted, one that
/// reached others too no longer lists it. A namespace created again later under the same name
/// is not reached by the old namespace's tokens.
pub fn forget_namespace_in_tokens(
    tokens: Vec<ApiToken>,
    namespace: &Namespace,
) -> (Vec<ApiToken>, Vec<String>) {
    let (mut kept, mut deleted) = (Vec::new(), Vec::new());
    for mut token in tokens {
        let Some(reached) = token.namespaces.as_mut() else {
            continue;
        };
        if !reached.contains(namespace) {
            continue;
        }
        reached.retain(|ns| ns != namespace);
        if reached.is_empty() {
            deleted.push(token.id);
        } else {
            kept.push(token);
        }
    }
    (kept, deleted)
}

impl AccessStore for EmbeddedStore {
    fn create_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(NAMESPACES)?;
            if record.name == Namespace::default() || table.get(record.name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "namespace",
                    name: record.name.to_string(),
                });
            }
            table.insert(record.name.as_str(), encode(record).as_slice())?;
            Ok(())
        })
    }

    fn update_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(NAMESPACES)?;
            // `default` is stored once it is given quotas.
            if record.name != Namespace::default() && table.get(record.name.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "namespace",
                    name: record.name.to_string(),
                });
            }
            table.insert(record.name.as_str(), encode(record).as_slice())?;
            Ok(())
        })
    }

    fn namespace_record(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceRecord>, StoreError> {
        let stored = self.read_one(NAMESPACES, namespace.as_str())?;
        if *namespace == Namespace::default() {
            return Ok(Some(
                stored.unwrap_or_else(NamespaceRecord::default_namespace),
            ));
        }
        Ok(stored)
    }

    fn namespace_records(&self) -> Result<Vec<NamespaceRecord>, StoreError> {
        Ok(with_default_first(self.read_all(NAMESPACES, None)?))
    }

    fn delete_namespace(&self, namespace: &Namespace) -> Result<(), StoreError> {
        if *namespace == Namespace::default() {
            return Err(StoreError::InUse {
                kind: "namespace",
                name: namespace.to_string(),
                user: "Gust itself (default always exists)".into(),
            });
        }
        self.write(|tx| {
            if let Some(user) = namespace_user(tx, namespace)? {
                return Err(StoreError::InUse {
                    kind: "namespace",
                    name: namespace.to_string(),
                    user,
                });
            }
            if tx
                .open_table(NAMESPACES)?
                .remove(namespace.as_str())?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    kind: "namespace",
                    name: namespace.to_string(),
                });
            }
            let mut tokens = tx.open_table(API_TOKENS)?;
            let mut all = Vec::new();
            for entry in tokens.iter()? {
                let (key, value) = entry?;
                all.push(decode::<ApiToken>(key.value(), value.value())?);
            }
            crate::queue::forget_namespace(tx, namespace)?;
            let (kept, deleted) = forget_namespace_in_tokens(all, namespace);
            for token in kept {
                tokens.insert(token.id.as_str(), encode(&token).as_slice())?;
            }
            for id in deleted {
                tokens.remove(id.as_str())?;
            }
            Ok(())
        })
    }

    fn create_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(API_TOKENS)?;
            for entry in table.iter()? {
                let (key, value) = entry?;
                let stored: ApiToken = decode(key.value(), value.value())?;
                if stored.name == token.name || stored.id == token.id {
                    return Err(StoreError::AlreadyExists {
                        kind: "token",
                        name: token.name.to_string(),
                    });
                }
            }
            table.insert(token.id.as_str(), encode(token).as_slice())?;
            Ok(())
        })
    }

    fn token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        self.read_one(API_TOKENS, id)
    }

    fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        self.read_all(API_TOKENS, None)
    }

    fn delete_token(&self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            if tx.open_table(API_TOKENS)?.remove(id)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "token",
                    name: id.to_owned(),
                });
            }
            Ok(())
        })
    }
}

impl AuditStore for EmbeddedStore {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let sequence = AUDIT_SEQUENCE.fetch_add(1, Ordering::Relaxed) % 10_000_000_000;
        let key = format!("{:013}/{sequence:010}", entry.at_ms);
        self.write(|tx| {
            tx.open_table(AUDIT)?
                .insert(key.as_str(), encode(entry).as_slice())?;
            Ok(())
        })
    }

    fn fold_audit(&self, entries: &[(u64, AuditEntry)]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(AUDIT)?;
            for (sequence, entry) in entries {
                // `c` for the cluster's sequence: never the key of an entry appended here.
                let key = format!("{:013}/c{sequence:020}", entry.at_ms);
                table.insert(key.as_str(), encode(entry).as_slice())?;
            }
            Ok(())
        })
    }

    fn audit(
        &self,
        since_ms: u64,
        namespace: Option<&Namespace>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(AUDIT)?;
        let start = format!("{since_ms:013}/");
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..)? {
            let (key, value) = entry?;
            let entry: AuditEntry = decode(key.value(), value.value())?;
            if namespace.is_none_or(|ns| entry.namespace.as_ref() == Some(ns)) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn prune_audit(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let end = format!("{before_ms:013}/");
        self.write(|tx| {
            let mut table = tx.open_table(AUDIT)?;
            let mut keys = Vec::new();
            for entry in table.range(..end.as_str())?.take(limit) {
                keys.push(entry?.0.value().to_owned());
            }
            for key in &keys {
                table.remove(key.as_str())?;
            }
            Ok(keys.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use gust_model::{Name, Role};

    use super::*;

    fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        (dir, store)
    }

    fn ns(name: &str) -> Namespace {
        Namespace::parse(name).unwrap()
    }

    fn token(id: &str, name: &str, namespaces: &[&str]) -> ApiToken {
        ApiToken {
            id: id.into(),
            name: Name::parse("token", name).unwrap(),
            role: Role::Deployer,
            namespaces: Some(namespaces.iter().map(|n| ns(n)).collect()),
            secret_sha256: "00".repeat(32),
            created_at_ms: 1,
            expires_at_ms: None,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn a_deleted_namespace_takes_its_tokens_and_default_cannot_go() {
        let (_dir, store) = store();
        for name in ["team-a", "team-b"] {
            store
                .create_namespace(&NamespaceRecord {
                    name: ns(name),
                    created_at_ms: 1,
                    quotas: Default::default(),
                    hosts: Vec::new(),
                })
                .unwrap();
        }
        // `default` is stored once given quotas, and still listed once, first.
        let mut default = NamespaceRecord::default_namespace();
        default.quotas.max_functions = Some(3);
        store.update_namespace(&default).unwrap();
        assert_eq!(
            store.namespace_record(&Namespace::default()).unwrap(),
            Some(default.clone())
        );
        assert!(matches!(
            store.create_namespace(&NamespaceRecord::default_namespace()),
            Err(StoreError::AlreadyExists { .. })
        ));
        store
            .create_token(&token("a1", "only-a", &["team-a"]))
            .unwrap();
        store
            .create_token(&token("ab", "both", &["team-a", "team-b"]))
            .unwrap();
        assert!(matches!(
            store.create_token(&token("a2", "only-a", &["team-a"])),
            Err(StoreError::AlreadyExists { .. })
        ));
        store.delete_namespace(&ns("team-a")).unwrap();
        assert_eq!(store.token("a1").unwrap(), None);
        assert_eq!(
            store.token("ab").unwrap().unwrap().namespaces,
            Some(vec![ns("team-b")])
        );
        let names: Vec<String> = store
            .namespace_records()
            .unwrap()
            .into_iter()
            .map(|r| r.name.to_string())
            .collect();
        assert_eq!(names, ["default", "team-b"]);
        assert_eq!(store.namespace_records().unwrap()[0], default);
        assert!(matches!(
            store.delete_namespace(&Namespace::default()),
            Err(StoreError::InUse { .. })
        ));
        assert!(matches!(
            store.delete_namespace(&ns("team-a")),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn audit_entries_come_back_oldest_first_by_namespace_and_go_past_their_retention() {
        let (_dir, store) = store();
        for (at_ms, namespace) in [
            (10, Some("a")),
            (20, Some("b")),
            (20, None),
            (30, Some("a")),
        ] {
            store
                .append_audit(&AuditEntry {
                    at_ms,
                    token: "admin".into(),
                    role: Role::Admin,
                    namespace: namespace.map(ns),
                    action: "POST /v1/functions".into(),
                    resource: "/v1/functions".into(),
                    status: 201,
                    request_id: None,
                })
                .unwrap();
        }
        let times = |entries: Vec<AuditEntry>| entries.iter().map(|e| e.at_ms).collect::<Vec<_>>();
        assert_eq!(times(store.audit(0, None, 10).unwrap()), [10, 20, 20, 30]);
        assert_eq!(times(store.audit(0, Some(&ns("a")), 10).unwrap()), [10, 30]);
        assert_eq!(times(store.audit(20, None, 2).unwrap()), [20, 20]);
        assert_eq!(store.prune_audit(20, 100).unwrap(), 1);
        assert_eq!(times(store.audit(0, None, 10).unwrap()), [20, 20, 30]);
    }
}
