//! Queue triggers in the embedded store: `mq_triggers`, `<namespace>/<name>` → the trigger.

use gust_model::{MqTrigger, Name, Namespace};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::embedded::{encode, scoped_key};
use crate::{EmbeddedStore, MqTriggerStore, StoreError};

pub(crate) const MQ_TRIGGERS: TableDefinition<&str, &[u8]> = TableDefinition::new("mq_triggers");

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(MQ_TRIGGERS)?;
    Ok(())
}

impl MqTriggerStore for EmbeddedStore {
    fn create_mq_trigger(&self, trigger: &MqTrigger) -> Result<(), StoreError> {
        let key = scoped_key(&trigger.namespace, &trigger.name);
        self.write(|tx| {
            crate::embedded::require_function(tx, &trigger.namespace, &trigger.function)?;
            let mut table = tx.open_table(MQ_TRIGGERS)?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "queue trigger",
                    name: trigger.name.to_string(),
                });
            }
            table.insert(key.as_str(), encode(trigger).as_slice())?;
            Ok(())
        })
    }

    fn mq_triggers(&self, namespace: Option<&Namespace>) -> Result<Vec<MqTrigger>, StoreError> {
        self.read_all(MQ_TRIGGERS, namespace.map(|ns| format!("{ns}/")))
    }

    fn delete_mq_trigger(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError> {
        let key = scoped_key(namespace, name);
        self.write(|tx| {
            if tx.open_table(MQ_TRIGGERS)?.remove(key.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "queue trigger",
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }
}
