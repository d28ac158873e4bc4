//! Delivers due invocations through the executor, one attempt at a time per invocation, and
//! decides what happens after each attempt: done, retried later, or dead-lettered.
//!
//! Only as many invocations are read from the store as can be delivered at once, so a burst
//! waits on disk, not in memory. Each attempt is recorded (state `running`, attempt count) in
//! the store before it is delivered, so a crash loses no attempt count; attempts that were in
//! flight at a crash are delivered again after the restart.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use gust_executor::body::read_prefix;
use gust_executor::{Invocation, InvokeError, Invoker, Payload, RequestId, TriggerKind};
use gust_model::{
    AsyncInvocation, AsyncSource, DeadReason, Delivery, InvocationState, MAX_STORED_RESPONSE_BYTES,
    Name, Namespace, StoredRequest, StoredResponse, Verdict, classify_status, retry_wait,
};
use gust_store::QueueChange;
use rand::RngExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::queue::{AsyncQueue, run_blocking};
use crate::request::delivery_request;

/// Where the dispatcher learns a function's retry budget when an attempt is due.
pub trait DeliveryPolicies: Send + Sync {
    /// `Ok(None)` when the function does not exist.
    fn delivery(&self, namespace: &Namespace, function: &Name) -> Result<Option<Delivery>, String>;
}

/// The longest the dispatcher sleeps without looking at the store.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Wait after the store failed before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Invocations claimed in one store transaction.
const CLAIM_BATCH: usize = 512;
/// How often ended invocations past their retention are deleted, and how many at a time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: usize = 10_000;

pub struct Dispatcher {
    queue: AsyncQueue,
    invoker: Arc<dyn Invoker>,
    policies: Arc<dyn DeliveryPolicies>,
    /// One permit per attempt in flight.
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    /// How long succeeded (and re-driven) invocations stay readable.
    retention: Duration,
}

/// What to do with an invocation after an attempt.
enum Next {
    Succeeded,
    RetryAt(u64),
    Dead(DeadReason),
}

impl Dispatcher {
    pub fn new(
        queue: AsyncQueue,
        invoker: Arc<dyn Invoker>,
        policies: Arc<dyn DeliveryPolicies>,
        max_in_flight: usize,
        retention: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue,
            invoker,
            policies,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            retention,
        })
    }

    /// Delivers invocations until `stop`; attempts in flight then finish on their own (see
    /// [`Dispatcher::drain`]).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let shared = &self.queue.shared;
        let store = shared.store.clone();
        let now = shared.clock.now_ms();
        match run_blocking(move || Ok(store.recover_running(now)?)).await {
            Ok(0) => {}
            Ok(lost) => tracing::warn!(lost, "attempts in flight at the last stop will run again"),
            Err(err) => {
                tracing::error!(error = %err, "cannot recover attempts in flight at the last stop")
            }
        }
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(tokio::time::Instant::now());
                self.sweep().await;
            }
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < CLAIM_BATCH {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            match self.claim(permits.len()).await {
                Ok(claimed) if claimed.is_empty() => {
                    drop(permits);
                    self.sleep_until_due(&stop).await;
                }
                Ok(claimed) => {
                    for ((invocation, request, delivery), permit) in
                        claimed.into_iter().zip(permits)
                    {
                        let dispatcher = self.clone();
                        tokio::spawn(async move {
                            dispatcher
                                .attempt(invocation, request, delivery, permit)
                                .await;
                        });
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the invocation queue; retrying");
                    drop(permits);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Deletes invocations that ended longer than the retention ago, and dead letters past
    /// their own retention or their function's cap.
    async fn sweep(&self) {
        let shared = &self.queue.shared;
        let before = shared
            .clock
            .now_ms()
            .saturating_sub(self.retention.as_millis() as u64);
        let store = shared.store.clone();
        match run_blocking(move || Ok(store.sweep_finished(before, SWEEP_BATCH)?)).await {
            Ok(0) => {}
            Ok(swept) => tracing::debug!(swept, "ended invocations past retention deleted"),
            Err(err) => tracing::warn!(error = %err, "cannot delete ended invocations"),
        }
        let limits = shared.limits;
        let dead_before = shared
            .clock
            .now_ms()
            .saturating_sub(limits.dead_letter_retention.as_millis() as u64);
        let store = shared.store.clone();
        let swept = run_blocking(move || {
            Ok(store.sweep_dead_letters(
                dead_before,
                limits.dead_letters_per_function,
                SWEEP_BATCH,
            )?)
        })
        .await;
        match swept {
            Ok(swept) => {
                for (reason, count) in [("retention", swept.expired), ("cap", swept.over_cap)] {
                    if count > 0 {
                        tracing::info!(reason, count, "dead letters deleted");
                        shared
                            .dead_letters_dropped
                            .get_or_create(&crate::queue::ReasonLabels { reason })
                            .inc_by(count as u64);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot delete old dead letters"),
        }
    }

    /// Waits until every attempt in flight has finished, or `deadline` has passed.
    pub async fn drain(&self, deadline: Duration) {
        let all = self.permits.acquire_many(self.max_in_flight as u32);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                "asynchronous attempts still in flight at stop will run again at the next start"
            );
        }
    }

    async fn sleep_until_due(&self, stop: &CancellationToken) {
        let shared = &self.queue.shared;
        let store = shared.store.clone();
        let next_due = run_blocking(move || Ok(store.next_due_ms()?))
            .await
            .unwrap_or(None);
        let now = shared.clock.now_ms();
        let wait = next_due.map_or(IDLE_POLL, |due| {
            Duration::from_millis(due.saturating_sub(now)).min(IDLE_POLL)
        });
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Reads up to `limit` due invocations and records an attempt for each that may run;
    /// those past their max age or of deleted functions end here.
    async fn claim(
        &self,
        limit: usize,
    ) -> Result<Vec<(AsyncInvocation, StoredRequest, Delivery)>, crate::QueueError> {
        let shared = &self.queue.shared;
        let now = shared.clock.now_ms();
        let store = shared.store.clone();
        let policies = self.policies.clone();
        // Storage reads, so off the async threads: the due invocations and the current retry
        // budget of each function among them (`None`: the function is gone).
        let (due, budgets, depth) = run_blocking(move || {
            let due = store.due_invocations(now, limit)?;
            let depth = store.pending_count()?;
            let mut budgets: HashMap<(Namespace, Name), Option<Delivery>> = HashMap::new();
            for (invocation, _) in &due {
                let key = (invocation.namespace.clone(), invocation.function.clone());
                if let Entry::Vacant(slot) = budgets.entry(key) {
                    let (namespace, function) = slot.key();
                    let budget = policies
                        .delivery(namespace, function)
                        .map_err(crate::QueueError::Unavailable)?;
                    slot.insert(budget);
                }
            }
            Ok((due, budgets, depth))
        })
        .await?;
        // Pending before this claim: what waits in the store for a delivery slot.
        shared.depth.set(depth as i64);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut changes = Vec::with_capacity(due.len());
        let mut claimed = Vec::with_capacity(due.len());
        for (mut invocation, request) in due {
            let policy = budgets[&(invocation.namespace.clone(), invocation.function.clone())];
            invocation.updated_at_ms = now;
            invocation.next_attempt_at_ms = None;
            match policy {
                None => finish_dead(&mut invocation, DeadReason::FunctionNotFound, now),
                Some(delivery) if past_max_age(&invocation, &delivery, now) => {
                    finish_dead(&mut invocation, DeadReason::MaxAgeExceeded, now)
                }
                Some(delivery) => {
                    invocation.state = InvocationState::Running;
                    invocation.attempts += 1;
                    claimed.push((invocation.clone(), request, delivery));
                }
            }
            changes.push(QueueChange::Update { invocation });
        }
        for outcome in shared.writer.submit(changes).await? {
            outcome.map_err(crate::QueueError::Unavailable)?;
        }
        Ok(claimed)
    }

    /// Delivers one attempt and stores what follows from it.
    async fn attempt(
        &self,
        mut invocation: AsyncInvocation,
        request: StoredRequest,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
    ) {
        let mut gust_headers = vec![
            ("x-gust-request-id", invocation.id.clone()),
            ("x-gust-attempt", invocation.attempts.to_string()),
        ];
        let trigger = match &invocation.source {
            AsyncSource::Timer { timer, .. } => {
                gust_headers.push(("x-gust-timer", timer.to_string()));
                TriggerKind::Timer
            }
            _ => TriggerKind::Async,
        };
        if let Some(from) = &invocation.redriven_from {
            gust_headers.push(("x-gust-redriven-from", from.clone()));
        }
        let result = match self
            .invoker
            .invoke(Invocation {
                id: RequestId::new(invocation.id.as_str()),
                namespace: invocation.namespace.clone(),
                function: invocation.function.clone(),
                trigger,
                attempt: invocation.attempts,
                request: delivery_request(&request, &gust_headers).map(Payload::Ready),
            })
            .await
        {
            // One byte past what is stored tells the record that it was cut.
            Ok(response) => read_prefix(response, MAX_STORED_RESPONSE_BYTES + 1).await,
            Err(err) => Err(err),
        };
        drop(permit);
        let now = self.queue.shared.clock.now_ms();
        let next = self.judge(&mut invocation, &delivery, result, now);
        invocation.updated_at_ms = now;
        match next {
            Next::Succeeded => {
                invocation.state = InvocationState::Succeeded;
                invocation.finished_at_ms = Some(now);
            }
            Next::RetryAt(due) => {
                invocation.state = InvocationState::Pending;
                invocation.next_attempt_at_ms = Some(due);
            }
            Next::Dead(reason) => finish_dead(&mut invocation, reason, now),
        }
        let id = invocation.id.clone();
        match self
            .queue
            .shared
            .writer
            .submit(vec![QueueChange::Update { invocation }])
            .await
        {
            Ok(_) => self.queue.shared.wake.notify_one(),
            // The invocation stays `running` in the store and runs again after a restart.
            Err(err) => {
                tracing::error!(error = %err, %id, "cannot record the outcome of an attempt")
            }
        }
    }

    /// Classifies an attempt's result and records it on the invocation.
    fn judge(
        &self,
        invocation: &mut AsyncInvocation,
        delivery: &Delivery,
        result: Result<http::Response<bytes::Bytes>, InvokeError>,
        now: u64,
    ) -> Next {
        let mut retry_after = Duration::ZERO;
        let verdict = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                retry_after = gust_executor::retry_after(&response);
                invocation.last_status = Some(status);
                invocation.response = Some(StoredResponse::new(status, response.body()));
                let verdict = classify_status(status);
                invocation.last_error = match verdict {
                    Verdict::Succeeded => None,
                    _ => Some(format!("the function answered {status}")),
                };
                verdict
            }
            Err(InvokeError::OverCapacity { retry_after, .. }) => {
                // Refused for capacity before reaching the function: not an attempt.
                invocation.attempts -= 1;
                let due = now + retry_after.as_millis() as u64;
                return Next::RetryAt(due.min(deadline(invocation, delivery)));
            }
            Err(error) => {
                invocation.last_status = Some(error.status());
                invocation.last_error = Some(format!("{}: {error}", error.reason()));
                invocation.response = None;
                match error {
                    InvokeError::FunctionNotFound { .. } => {
                        return Next::Dead(DeadReason::FunctionNotFound);
                    }
                    _ => Verdict::Retry,
                }
            }
        };
        match verdict {
            Verdict::Succeeded => Next::Succeeded,
            Verdict::Final => Next::Dead(DeadReason::FinalStatus),
            Verdict::Retry if invocation.attempts >= delivery.max_attempts => {
                Next::Dead(DeadReason::AttemptsExhausted)
            }
            Verdict::Retry => {
                let wait = retry_wait(
                    invocation.attempts,
                    retry_after,
                    rand::rng().random::<f64>(),
                );
                let due = now + wait.as_millis() as u64;
                Next::RetryAt(due.min(deadline(invocation, delivery)))
            }
        }
    }
}

fn deadline(invocation: &AsyncInvocation, delivery: &Delivery) -> u64 {
    invocation.accepted_at_ms + delivery.max_age.as_millis() as u64
}

fn past_max_age(invocation: &AsyncInvocation, delivery: &Delivery, now: u64) -> bool {
    now >= deadline(invocation, delivery)
}

fn finish_dead(invocation: &mut AsyncInvocation, reason: DeadReason, now: u64) {
    invocation.state = if reason == DeadReason::MaxAgeExceeded {
        InvocationState::Expired
    } else {
        InvocationState::Dead
    };
    invocation.reason = Some(reason);
    invocation.finished_at_ms = Some(now);
    invocation.next_attempt_at_ms = None;
}
