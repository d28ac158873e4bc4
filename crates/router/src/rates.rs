//! Requests per second a namespace's public routes take together (its quota): a token bucket
//! per namespace holding a second's worth of requests, refilled continuously. A request that
//! finds it empty is refused with how long until the next token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gust_model::Namespace;

struct Bucket {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("bucket lock is never poisoned");
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.per_second)
            .min(self.per_second);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

/// The namespaces with a request rate quota, each with its bucket; shared by the public
/// listener (takes) and the control plane (sets after a namespace changes).
#[derive(Clone, Default)]
pub struct NamespaceRates(Arc<ArcSwap<HashMap<Namespace, Arc<Bucket>>>>);

impl NamespaceRates {
    /// Sets every namespace's quota; a namespace whose quota did not change keeps its bucket
    /// (and what it has taken this second).
    pub fn replace(&self, quotas: impl IntoIterator<Item = (Namespace, u32)>) {
        let current = self.0.load_full();
        let next = quotas
            .into_iter()
            .map(|(namespace, per_second)| {
                let bucket = match current.get(&namespace) {
                    Some(kept) if kept.per_second == f64::from(per_second.max(1)) => kept.clone(),
                    _ => Arc::new(Bucket::new(per_second)),
                };
                (namespace, bucket)
            })
            .collect();
        self.0.store(Arc::new(next));
    }

    /// Counts a request to `namespace`; `Err` with how long until it may send again when it
    /// is over its quota.
    pub fn take(&self, namespace: &Namespace) -> Result<(), Duration> {
        match self.0.load().get(namespace) {
            Some(bucket) => bucket.take(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_s_worth_then_refused_with_the_wait_and_others_untouched() {
        let rates = NamespaceRates::default();
        let (a, b) = (
            Namespace::parse("team-a").unwrap(),
            Namespace::parse("team-b").unwrap(),
        );
        rates.replace([(a.clone(), 5)]);
        for _ in 0..5 {
            assert!(rates.take(&a).is_ok());
        }
        let wait = rates.take(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(rates.take(&b).is_ok(), "no quota, no limit");
        // The same quota again keeps the bucket as it is; a new one starts full.
        rates.replace([(a.clone(), 5)]);
        assert!(rates.take(&a).is_err());
        rates.replace([(a.clone(), 6)]);
        assert!(rates.take(&a).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        rates.replace([]);
        assert!(rates.take(&a).is_ok());
    }
}
