//! Secrets and configs in the embedded store: `value_sets`, `<kind>/<namespace>/<name>` → the
//! set (a secret's values sealed).

use gust_model::{Function, Name, Namespace, ValueKind, ValueSet};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::embedded::{FUNCTIONS, decode, encode};
use crate::{EmbeddedStore, StoreError, ValueStore};

const VALUE_SETS: TableDefinition<&str, &[u8]> = TableDefinition::new("value_sets");

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(VALUE_SETS)?;
    Ok(())
}

/// The first secret or config of a namespace, if it holds any (`secret db`).
pub(crate) fn first_in_namespace(
    tx: &WriteTransaction,
    namespace: &Namespace,
) -> Result<Option<String>, StoreError> {
    let table = tx.open_table(VALUE_SETS)?;
    for kind in [ValueKind::Secret, ValueKind::Config] {
        let prefix = format!("{}/{namespace}/", kind.noun());
        if let Some(entry) = table.range(prefix.as_str()..)?.next() {
            let (key, _) = entry?;
            if let Some(name) = key.value().strip_prefix(&prefix) {
                return Ok(Some(format!("{} {name}", kind.noun())));
            }
        }
    }
    Ok(None)
}

fn key(kind: ValueKind, namespace: &Namespace, name: &Name) -> String {
    format!("{}/{namespace}/{name}", kind.noun())
}

/// The first function whose current revision mounts the set, if any.
pub fn mounted_by<'a>(
    functions: impl IntoIterator<Item = &'a Function>,
    kind: ValueKind,
    namespace: &Namespace,
    name: &Name,
) -> Option<String> {
    functions
        .into_iter()
        .find(|f| f.namespace == *namespace && f.current_revision().mounts.of(kind).contains(name))
        .map(|f| format!("function {}", f.name))
}

impl ValueStore for EmbeddedStore {
    fn create_values(&self, set: &ValueSet) -> Result<(), StoreError> {
        let key = key(set.kind, &set.namespace, &set.name);
        self.write(|tx| {
            let mut table = tx.open_table(VALUE_SETS)?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: set.kind.noun(),
                    name: set.name.to_string(),
                });
            }
            table.insert(key.as_str(), encode(set).as_slice())?;
            Ok(())
        })
    }

    fn update_values(&self, set: &ValueSet) -> Result<(), StoreError> {
        let key = key(set.kind, &set.namespace, &set.name);
        self.write(|tx| {
            let mut table = tx.open_table(VALUE_SETS)?;
            let stored: ValueSet = match table.get(key.as_str())? {
                Some(value) => decode(&key, value.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: set.kind.noun(),
                        name: set.name.to_string(),
                    });
                }
            };
            if stored.version + 1 != set.version {
                return Err(StoreError::Changed {
                    kind: set.kind.noun(),
                    name: set.name.to_string(),
                });
            }
            table.insert(key.as_str(), encode(set).as_slice())?;
            Ok(())
        })
    }

    fn values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<Option<ValueSet>, StoreError> {
        self.read_one(VALUE_SETS, &key(kind, namespace, name))
    }

    fn value_sets(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
    ) -> Result<Vec<ValueSet>, StoreError> {
        self.read_all(VALUE_SETS, Some(format!("{}/{namespace}/", kind.noun())))
    }

    fn delete_values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<(), StoreError> {
        let key = key(kind, namespace, name);
        self.write(|tx| {
            let functions = tx.open_table(FUNCTIONS)?;
            let prefix = format!("{namespace}/");
            let mut in_namespace = Vec::new();
            for entry in functions.range(prefix.as_str()..)? {
                let (fn_key, value) = entry?;
                if !fn_key.value().starts_with(&prefix) {
                    break;
                }
                in_namespace.push(decode::<Function>(fn_key.value(), value.value())?);
            }
            if let Some(user) = mounted_by(&in_namespace, kind, namespace, name) {
                return Err(StoreError::InUse {
                    kind: kind.noun(),
                    name: name.to_string(),
                    user,
                });
            }
            if tx.open_table(VALUE_SETS)?.remove(key.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: kind.noun(),
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }
}

/// What a revision mounts, opened: every key of its secrets (unsealed) and configs, and the
/// environment variables its secrets give with `secret_env`. A mounted set that is gone, or a
/// secret that does not open with this node's key, is an error naming it.
pub fn open_mounts(
    store: &(impl ValueStore + ?Sized),
    sealer: &crate::Sealer,
    namespace: &Namespace,
    mounts: &gust_model::ValueMounts,
) -> Result<OpenedMounts, StoreError> {
    use base64::Engine;
    let mut opened = OpenedMounts::default();
    for kind in [ValueKind::Secret, ValueKind::Config] {
        for name in mounts.of(kind) {
            let set = store
                .values(kind, namespace, name)?
                .ok_or_else(|| StoreError::NotFound {
                    kind: kind.noun(),
                    name: name.to_string(),
                })?;
            for (key, stored) in &set.data {
                let value = match kind {
                    ValueKind::Secret => {
                        sealer.open_value((namespace, name, key, set.version), stored)?
                    }
                    ValueKind::Config => base64::engine::general_purpose::STANDARD
                        .decode(stored)
                        .map_err(|_| {
                        StoreError::Database(format!("config {name} key {key} is not base64"))
                    })?,
                };
                let value = gust_model::SecretValue(value);
                if kind == ValueKind::Secret && mounts.secret_env && gust_model::is_env_name(key) {
                    opened.env.push((key.clone(), value.clone()));
                }
                opened.files.push(gust_model::MountedValue {
                    kind,
                    name: name.clone(),
                    key: key.clone(),
                    value,
                });
            }
        }
    }
    Ok(opened)
}

/// See [`open_mounts`].
#[derive(Debug, Default)]
pub struct OpenedMounts {
    pub files: Vec<gust_model::MountedValue>,
    pub env: Vec<(String, gust_model::SecretValue)>,
}
