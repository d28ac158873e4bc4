//! Queue triggers: messages from NATS JetStream, MQTT, AMQP (RabbitMQ) and Redis Streams
//! delivered to functions, at least once.
//!
//! - [`MqTriggers`] runs one task per stored trigger: connect, consume, reconnect with backoff
//!   when the broker goes away, stop when the trigger is deleted or Gust stops.
//! - `deliver` is what every kind shares: a message becomes a CloudEvent (binary mode) and an
//!   invocation through the executor, is retried like an async invocation (`--max-retries`
//!   more attempts, jittered exponential backoff), and is acknowledged only after the function
//!   succeeded or its failure was written to the error topic (or, without one, the dead-letter
//!   store). A message whose outcome could not be recorded stays unacknowledged and comes back.
//! - `nats`, `mqtt`, `amqp`, `redis`: each kind's client code behind [`broker::Session`].

pub mod broker;
pub mod cloudevent;
mod deliver;
mod status;

mod amqp;
mod mqtt;
mod nats;
mod redis;

pub use broker::window;
pub use deliver::PROGRESS_EVERY;
pub use mqtt::receive_maximum as mqtt_receive_maximum;
pub use status::{TriggerState, TriggerStatus};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_executor::Invoker;
use gust_executor::{Clock, Enqueue};
use gust_model::MqTrigger;
use gust_store::MqTriggerStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::RngExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::Session;
use crate::deliver::TriggerContext;
use crate::status::StatusCell;

/// First and longest wait before reconnecting to a broker.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// The longest a connection and its setup (streams, queues, groups) may take: a broker that
/// accepts connections while it is still starting can leave a setup call unanswered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long messages in flight may take to finish when a connection ends or Gust stops.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the stored triggers are read again even without a change notice.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    kind: &'static str,
    /// `succeeded`, `failed` (acknowledged after the error topic or dead-letter write) or
    /// `released` (left for redelivery because that write failed).
    outcome: &'static str,
}

/// Counters of every trigger's messages, by broker kind (bounded labels). Cheap to clone.
#[derive(Clone, Default)]
pub struct MqMetrics {
    messages: Family<MessageLabels, Counter>,
}

impl MqMetrics {
    /// Adds `gust_mqt_messages_total` to a registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gust_mqt_messages",
            "Queue trigger messages settled, by broker kind and outcome",
            self.messages.clone(),
        );
    }

    fn count(&self, trigger: &MqTrigger, outcome: &'static str) {
        self.messages
            .get_or_create(&MessageLabels {
                kind: trigger.kind.as_str(),
                outcome,
            })
            .inc();
    }
}

/// A trigger's task.
struct Running {
    created_at_ms: u64,
    status: Arc<StatusCell>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct MqTriggers {
    store: Arc<dyn MqTriggerStore>,
    invoker: Arc<dyn Invoker>,
    dead_letters: Arc<dyn Enqueue>,
    clock: Arc<dyn Clock>,
    metrics: MqMetrics,
    running: Mutex<HashMap<String, Running>>,
    changed: Notify,
    /// This node's id when it is one of a cluster's: every node consumes every trigger, as
    /// one member of a group the broker shares the messages out to.
    member: Option<String>,
}

impl MqTriggers {
    pub fn new(
        store: Arc<dyn MqTriggerStore>,
        invoker: Arc<dyn Invoker>,
        dead_letters: Arc<dyn Enqueue>,
        clock: Arc<dyn Clock>,
        metrics: MqMetrics,
    ) -> Arc<Self> {
        Arc::new(Self::build(store, invoker, dead_letters, clock, metrics))
    }

    fn build(
        store: Arc<dyn MqTriggerStore>,
        invoker: Arc<dyn Invoker>,
        dead_letters: Arc<dyn Enqueue>,
        clock: Arc<dyn Clock>,
        metrics: MqMetrics,
    ) -> Self {
        Self {
            store,
            invoker,
            dead_letters,
            clock,
            metrics,
            running: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            member: None,
        }
    }

    /// Queue triggers of a cluster's node `node_id`: MQTT subscriptions are shared
    /// (`$share/...`) and Redis consumers named per node, so that the nodes compete for
    /// messages (NATS durable consumers and AMQP queues are shared already).
    pub fn in_cluster(
        store: Arc<dyn MqTriggerStore>,
        invoker: Arc<dyn Invoker>,
        dead_letters: Arc<dyn Enqueue>,
        clock: Arc<dyn Clock>,
        metrics: MqMetrics,
        node_id: String,
    ) -> Arc<Self> {
        let mut triggers = Self::build(store, invoker, dead_letters, clock, metrics);
        triggers.member = Some(node_id);
        Arc::new(triggers)
    }

    /// Tells the triggers' supervisor to read the stored triggers again.
    pub fn triggers_changed(&self) {
        self.changed.notify_one();
    }

    /// A running trigger's connection state and last error.
    pub fn status(&self, trigger: &MqTrigger) -> Option<TriggerStatus> {
        let running = self.lock();
        running
            .get(&key(trigger))
            .filter(|r| r.created_at_ms == trigger.created_at_ms)
            .map(|r| r.status.get())
    }

    /// Starts and stops trigger tasks as triggers are created and deleted, until `stop`;
    /// then stops them all, letting messages in flight finish for a while.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.reload(&stop).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
        }
        let stopping: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for running in &stopping {
            running.stop.cancel();
        }
        for running in stopping {
            let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), running.task).await;
        }
    }

    async fn reload(self: &Arc<Self>, stop: &CancellationToken) {
        let store = self.store.clone();
        let triggers = match tokio::task::spawn_blocking(move || store.mq_triggers(None)).await {
            Ok(Ok(triggers)) => triggers,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read queue triggers; keeping the ones running");
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, "queue trigger read task failed");
                return;
            }
        };
        let mut running = self.lock();
        let mut wanted: HashMap<String, MqTrigger> =
            triggers.into_iter().map(|t| (key(&t), t)).collect();
        running.retain(|key, task| {
            let keep = wanted
                .get(key)
                .is_some_and(|t| t.created_at_ms == task.created_at_ms);
            if keep {
                wanted.remove(key);
            } else {
                task.stop.cancel();
            }
            keep
        });
        for (key, trigger) in wanted {
            let status = Arc::new(StatusCell::new());
            let task_stop = stop.child_token();
            let context = Arc::new(TriggerContext {
                event_source: trigger.event_source(),
                event_type: trigger.event_type(),
                trigger: trigger.clone(),
                invoker: self.invoker.clone(),
                dead_letters: self.dead_letters.clone(),
                clock: self.clock.clone(),
                status: status.clone(),
                metrics: self.metrics.clone(),
                member: self.member.clone(),
            });
            tracing::info!(trigger = %key, kind = trigger.kind.as_str(), topic = %trigger.topic, "queue trigger starting");
            let task = tokio::spawn(consume(context, task_stop.clone()));
            running.insert(
                key,
                Running {
                    created_at_ms: trigger.created_at_ms,
                    status,
                    stop: task_stop,
                    task,
                },
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(trigger: &MqTrigger) -> String {
    format!("{}/{}", trigger.namespace, trigger.name)
}

/// One trigger's life: connect, consume until the connection breaks, wait, connect again.
async fn consume(context: Arc<TriggerContext>, stop: CancellationToken) {
    let mut wait = RECONNECT_MIN;
    loop {
        context.status.set_state(TriggerState::Connecting);
        let connected = tokio::select! {
            _ = stop.cancelled() => break,
            session = tokio::time::timeout(CONNECT_TIMEOUT, broker::connect(&context.trigger, context.member.as_deref())) => {
                session.unwrap_or_else(|_| Err(broker::BrokerError(format!(
                    "no answer from the broker within {CONNECT_TIMEOUT:?}"
                ))))
            }
        };
        let error = match connected {
            Ok(session) => {
                context.status.set_state(TriggerState::Connected);
                wait = RECONNECT_MIN;
                match serve(&context, session, &stop).await {
                    Ok(()) => break,
                    Err(err) => err,
                }
            }
            Err(err) => err,
        };
        if error.is_redelivery() {
            tracing::debug!(trigger = %context.trigger.name, "reconnecting for a redelivery");
        } else {
            tracing::warn!(trigger = %context.trigger.name, error = %error, "queue trigger disconnected; reconnecting");
            context.status.error(&error.0, context.clock.now_ms());
        }
        context.status.set_state(TriggerState::Reconnecting);
        let jittered = wait.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(jittered) => {}
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
    context.status.set_state(TriggerState::Stopped);
}

/// Consumes one session: up to `concurrency` messages worked on, and the session's read-ahead
/// more received and waiting for a worker. `Ok` when stopped, the connection's error
/// otherwise; either way messages in flight get [`DRAIN`] to finish.
async fn serve(
    context: &Arc<TriggerContext>,
    mut session: Box<dyn Session>,
    stop: &CancellationToken,
) -> Result<(), broker::BrokerError> {
    let concurrency = context.trigger.concurrency as usize;
    let window = Arc::new(Semaphore::new(concurrency + session.read_ahead()));
    let workers = Arc::new(Semaphore::new(concurrency));
    let publisher = session.publisher();
    let mut in_flight = JoinSet::new();
    let ended = loop {
        let unsettled = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            held = window.clone().acquire_owned() => held.expect("the semaphore is never closed"),
        };
        let received = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            received = session.next() => received,
        };
        match received {
            Ok(message) => {
                let (context, publisher, workers, stop) = (
                    context.clone(),
                    publisher.clone(),
                    workers.clone(),
                    stop.clone(),
                );
                in_flight.spawn(async move {
                    context.deliver(publisher, message, workers, stop).await;
                    drop(unsettled);
                });
            }
            Err(err) => break Err(err),
        }
        while in_flight.try_join_next().is_some() {}
    };
    let drained = tokio::time::timeout(DRAIN, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Unacknowledged, so the broker delivers them again.
        in_flight.abort_all();
    }
    drop(session);
    ended
}
