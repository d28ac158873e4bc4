//! A namespace's quotas on what it runs at once: instances serving requests, and the memory
//! they are given. Each attempt holds its share from the moment it is admitted until its
//! response's last byte; a request that would pass a quota is refused at once (429, reason
//! `quota`) rather than queued, so one tenant's burst never waits in another's way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use gust_model::Namespace;

use crate::InvokeError;

/// What a namespace may run at once; `None` for no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunQuota {
    pub instances: Option<u32>,
    pub memory_mb: Option<u64>,
}

/// The quotas of every namespace that has one, and what each runs now.
#[derive(Default)]
pub struct NamespaceQuotas {
    quotas: ArcSwap<HashMap<Namespace, RunQuota>>,
    running: Arc<Mutex<HashMap<Namespace, (u32, u64)>>>,
}

impl NamespaceQuotas {
    /// Sets every namespace's quota (those absent have none).
    pub fn replace(&self, quotas: HashMap<Namespace, RunQuota>) {
        self.quotas.store(Arc::new(quotas));
    }

    /// Takes one instance of `memory_mb` for `namespace`, or says which quota it would pass.
    pub(crate) fn take(
        &self,
        namespace: &Namespace,
        memory_mb: u32,
    ) -> Result<Option<QuotaHold>, InvokeError> {
        let Some(quota) = self.quotas.load().get(namespace).copied() else {
            return Ok(None);
        };
        let mut running = self.running.lock().expect("quota lock is never poisoned");
        let (instances, memory) = running.entry(namespace.clone()).or_default();
        let over = |what: String| InvokeError::OverQuota {
            namespace: namespace.to_string(),
            what,
        };
        if let Some(max) = quota.instances
            && *instances >= max
        {
            return Err(over(format!("{max} instances")));
        }
        if let Some(max) = quota.memory_mb
            && *memory + u64::from(memory_mb) > max
        {
            return Err(over(format!("{max} MB of memory")));
        }
        *instances += 1;
        *memory += u64::from(memory_mb);
        Ok(Some(QuotaHold {
            running: self.running.clone(),
            namespace: namespace.clone(),
            memory_mb: u64::from(memory_mb),
        }))
    }

    /// Instances and memory (MB) a namespace runs now.
    pub fn running(&self, namespace: &Namespace) -> (u32, u64) {
        self.running
            .lock()
            .expect("quota lock is never poisoned")
            .get(namespace)
            .copied()
            .unwrap_or_default()
    }
}

/// One attempt's share of its namespace's quotas, given back when dropped.
pub(crate) struct QuotaHold {
    running: Arc<Mutex<HashMap<Namespace, (u32, u64)>>>,
    namespace: Namespace,
    memory_mb: u64,
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("quota lock is never poisoned");
        if let Some((instances, memory)) = running.get_mut(&self.namespace) {
            *instances = instances.saturating_sub(1);
            *memory = memory.saturating_sub(self.memory_mb);
            if *instances == 0 {
                running.remove(&self.namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_taken_up_to_each_quota_and_given_back() {
        let quotas = NamespaceQuotas::default();
        let (a, b) = (
            Namespace::parse("team-a").unwrap(),
            Namespace::parse("team-b").unwrap(),
        );
        quotas.replace(HashMap::from([(
            a.clone(),
            RunQuota {
                instances: Some(3),
                memory_mb: Some(256),
            },
        )]));
        let first = quotas.take(&a, 128).unwrap();
        let second = quotas.take(&a, 128).unwrap();
        let refused = quotas.take(&a, 128).err().unwrap();
        assert!(
            refused.to_string().contains("256 MB of memory"),
            "{refused}"
        );
        assert_eq!(refused.status(), 429);
        assert_eq!(quotas.running(&a), (2, 256));
        drop(first);
        let third = quotas.take(&a, 64).unwrap();
        let fourth = quotas.take(&a, 64).unwrap();
        assert!(
            quotas
                .take(&a, 1)
                .err()
                .unwrap()
                .to_string()
                .contains("3 instances")
        );
        assert!(
            quotas.take(&b, 4096).unwrap().is_none(),
            "no quota, no hold"
        );
        drop((second, third, fourth));
        assert_eq!(quotas.running(&a), (0, 0));
    }
}
