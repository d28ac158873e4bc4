//! A node's roles: each part of `gust up` that runs on its own (a listener, a background loop)
//! is a [`Role`], started in the order the node lists them and stopped in the reverse order,
//! so that what takes work in (the listeners) stops before what does the work (the executor)
//! and what records it (usage) stops last. `gust up --roles` picks some of them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The roles `gust up --roles` can pick; every one by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum RoleName {
    /// The control-plane API listener.
    Api,
    /// The public listener: HTTP routes.
    Router,
    /// Function instances: pools, the idle reaper, minimum instances.
    Executor,
    /// The asynchronous queue's dispatcher: runs accepted invocations and timer ticks.
    Async,
    /// Timers: turns ticks into asynchronous invocations.
    Timers,
    /// Queue triggers: consumes brokers' messages.
    Queues,
}

impl RoleName {
    pub const ALL: [RoleName; 6] = [
        RoleName::Api,
        RoleName::Router,
        RoleName::Executor,
        RoleName::Async,
        RoleName::Timers,
        RoleName::Queues,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Router => "router",
            Self::Executor => "executor",
            Self::Async => "async",
            Self::Timers => "timers",
            Self::Queues => "queues",
        }
    }

    /// Whether this role invokes functions, and so needs the executor on the same node.
    fn invokes(self) -> bool {
        matches!(self, Self::Api | Self::Router | Self::Async | Self::Queues)
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles a node runs, checked: a role that invokes functions needs the executor beside it.
pub fn check_roles(roles: &[RoleName]) -> anyhow::Result<()> {
    if roles.is_empty() {
        anyhow::bail!(
            "--roles names no role; pick from api, router, executor, async, timers, queues"
        );
    }
    if !roles.contains(&RoleName::Executor)
        && let Some(role) = roles.iter().find(|role| role.invokes())
    {
        anyhow::bail!(
            "--roles: {} invokes functions and needs executor on the same node",
            role.as_str()
        );
    }
    Ok(())
}

/// One part of a node.
#[async_trait]
pub trait Role: Send {
    fn name(&self) -> &'static str;

    /// Starts the role's work in the background.
    fn start(&mut self);

    /// Stops the role and returns once it does no more work; work in flight may take until
    /// `deadline` to finish.
    async fn stop(&mut self, deadline: Instant);
}

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A role that is one background task: `run` works until its token is cancelled; `then`
/// winds down what is left (drains, flushes) within the time left before the deadline.
pub struct Task {
    name: &'static str,
    run: Option<Box<dyn FnOnce(CancellationToken) -> Work + Send>>,
    then: Option<Box<dyn FnOnce(Duration) -> Work + Send>>,
    stop: CancellationToken,
    running: Option<JoinHandle<()>>,
}

impl Task {
    pub fn new<F>(
        name: &'static str,
        run: impl FnOnce(CancellationToken) -> F + Send + 'static,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            run: Some(Box::new(move |stop| Box::pin(run(stop)))),
            then: None,
            stop: CancellationToken::new(),
            running: None,
        }
    }

    /// What to do once the task has stopped, given the time left to the deadline.
    pub fn then<F>(mut self, then: impl FnOnce(Duration) -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.then = Some(Box::new(move |left| Box::pin(then(left))));
        self
    }
}

#[async_trait]
impl Role for Task {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&mut self) {
        if let Some(run) = self.run.take() {
            self.running = Some(tokio::spawn(run(self.stop.clone())));
        }
    }

    async fn stop(&mut self, deadline: Instant) {
        self.stop.cancel();
        if let Some(running) = self.running.take()
            && tokio::time::timeout_at(deadline, running).await.is_err()
        {
            tracing::warn!(role = self.name, "did not stop by the drain deadline");
        }
        if let Some(then) = self.then.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout_at(deadline, then(left)).await.is_err() {
                tracing::warn!(role = self.name, "did not wind down by the drain deadline");
            }
        }
    }
}

/// Starts `roles` in order, waits for `shutdown`, then stops them in reverse order, all within
/// `drain` of the shutdown.
pub async fn run(mut roles: Vec<Box<dyn Role>>, shutdown: CancellationToken, drain: Duration) {
    for role in &mut roles {
        tracing::debug!(role = role.name(), "starting");
        role.start();
    }
    shutdown.cancelled().await;
    let deadline = Instant::now() + drain;
    for role in roles.iter_mut().rev() {
        tracing::debug!(role = role.name(), "stopping");
        role.stop(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn roles_start_in_order_and_stop_in_reverse_within_the_drain() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let role = |name: &'static str, linger: Duration| {
            let (started, stopped) = (events.clone(), events.clone());
            Box::new(
                Task::new(name, move |stop: CancellationToken| async move {
                    started.lock().unwrap().push(format!("{name} started"));
                    stop.cancelled().await;
                    tokio::time::sleep(linger).await;
                })
                .then(move |_left| async move {
                    stopped.lock().unwrap().push(format!("{name} stopped"));
                }),
            ) as Box<dyn Role>
        };
        let shutdown = CancellationToken::new();
        let node = tokio::spawn(run(
            vec![
                role("first", Duration::ZERO),
                role("second", Duration::from_secs(60)),
            ],
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        tokio::task::yield_now().await;
        let asked = Instant::now();
        shutdown.cancel();
        node.await.unwrap();
        // "second" lingers past the drain: it is given up on at the deadline, not waited for.
        assert_eq!(asked.elapsed(), Duration::from_secs(5));
        assert_eq!(
            *events.lock().unwrap(),
            [
                "first started",
                "second started",
                "second stopped",
                "first stopped"
            ]
        );
    }

    #[test]
    fn a_role_that_invokes_functions_needs_the_executor() {
        assert!(check_roles(&RoleName::ALL).is_ok());
        assert!(check_roles(&[RoleName::Executor, RoleName::Router]).is_ok());
        assert!(check_roles(&[RoleName::Timers]).is_ok());
        let err = check_roles(&[RoleName::Api]).unwrap_err().to_string();
        assert!(err.contains("api invokes functions"), "{err}");
        assert!(check_roles(&[]).is_err());
    }
}
