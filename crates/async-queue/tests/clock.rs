//! Backoff and max age under a hand-driven clock, with the real embedded store: the
//! dispatcher is given a scripted executor so that each attempt's outcome and the time it
//! happens at are chosen by the test.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_async_queue::{AsyncQueue, Clock, DeliveryPolicies, Dispatcher, QueueLimits};
use gust_executor::{Invocation, InvokeError, Invoker, RequestId, ResponseBody};
use gust_model::{AsyncInvocation, AsyncSource, Delivery, Name, Namespace};
use gust_store::EmbeddedStore;
use tokio_util::sync::CancellationToken;

const START_MS: u64 = 1_800_000_000_000;

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Answers each delivery with the next scripted status and records the attempt numbers.
struct ScriptedInvoker {
    statuses: Mutex<VecDeque<u16>>,
    attempts: Mutex<Vec<u32>>,
}

#[async_trait]
impl Invoker for ScriptedInvoker {
    async fn invoke(
        &self,
        invocation: Invocation,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        self.attempts.lock().unwrap().push(invocation.attempt);
        let status = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
        Ok(http::Response::builder()
            .status(status)
            .body(gust_executor::body::full("scripted"))
            .unwrap())
    }
}

struct Policy(Delivery);

impl DeliveryPolicies for Policy {
    fn delivery(&self, _: &Namespace, _: &Name) -> Result<Option<Delivery>, String> {
        Ok(Some(self.0))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    queue: AsyncQueue,
    invoker: Arc<ScriptedInvoker>,
    stop: CancellationToken,
}

fn setup(statuses: &[u16], delivery: Delivery) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap());
    let clock = Arc::new(ManualClock(AtomicU64::new(START_MS)));
    let queue = AsyncQueue::new(store, clock.clone(), QueueLimits::default());
    let invoker = Arc::new(ScriptedInvoker {
        statuses: Mutex::new(statuses.iter().copied().collect()),
        attempts: Mutex::new(Vec::new()),
    });
    let dispatcher = Dispatcher::new(
        queue.clone(),
        invoker.clone(),
        Arc::new(Policy(delivery)),
        8,
        Duration::from_secs(3600),
    );
    let stop = CancellationToken::new();
    tokio::spawn(dispatcher.run(stop.clone()));
    Setup {
        _dir: dir,
        clock,
        queue,
        invoker,
        stop,
    }
}

async fn enqueue(queue: &AsyncQueue) -> String {
    let id = RequestId::generate();
    let request = http::Request::builder()
        .uri("/")
        .body(Bytes::new())
        .unwrap();
    queue
        .enqueue(
            &id,
            Namespace::default(),
            Name::parse("function", "f").unwrap(),
            AsyncSource::Api,
            &request,
        )
        .await
        .unwrap();
    id.to_string()
}

/// Polls the stored invocation until `done` holds (real time: the dispatcher runs on tokio).
async fn wait_for(
    queue: &AsyncQueue,
    id: &str,
    done: impl Fn(&AsyncInvocation) -> bool,
) -> AsyncInvocation {
    for _ in 0..500 {
        let current = queue.invocation(id).await.unwrap().unwrap();
        if done(&current) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{:?}", queue.invocation(id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_their_jittered_backoff_and_stop_at_max_attempts() {
    let s = setup(
        &[500, 503, 500],
        Delivery {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        },
    );
    let id = enqueue(&s.queue).await;
    let after_first = wait_for(&s.queue, &id, |i| {
        i.attempts == 1 && i.next_attempt_at_ms.is_some()
    })
    .await;
    let wait = after_first.next_attempt_at_ms.unwrap() - START_MS;
    assert!((500..=1000).contains(&wait), "first retry in {wait} ms");

    // Nothing runs before its time, whatever real time passes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.invoker.attempts.lock().unwrap().len(), 1);

    // The dispatcher looks at the store at least every second.
    s.clock.advance(Duration::from_millis(wait));
    let after_second = wait_for(&s.queue, &id, |i| {
        i.attempts == 2 && i.next_attempt_at_ms.is_some()
    })
    .await;
    let second_wait = after_second.next_attempt_at_ms.unwrap() - s.clock.now_ms();
    assert!(
        (1000..=2000).contains(&second_wait),
        "second retry in {second_wait} ms"
    );

    s.clock.advance(Duration::from_millis(second_wait));
    let dead = wait_for(&s.queue, &id, |i| {
        i.state == gust_model::InvocationState::Dead
    })
    .await;
    assert_eq!(dead.reason, Some(gust_model::DeadReason::AttemptsExhausted));
    assert_eq!(dead.attempts, 3);
    assert_eq!(*s.invoker.attempts.lock().unwrap(), vec![1, 2, 3]);
    s.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_past_its_max_age_expires_and_never_runs_again() {
    let s = setup(
        &[503],
        Delivery {
            max_attempts: 10,
            max_age: Duration::from_secs(60),
        },
    );
    let id = enqueue(&s.queue).await;
    wait_for(&s.queue, &id, |i| {
        i.attempts == 1 && i.next_attempt_at_ms.is_some()
    })
    .await;
    // An hour passes (Gust was down, say): the retry is due but the invocation is too old.
    s.clock.advance(Duration::from_secs(3600));
    let expired = wait_for(&s.queue, &id, |i| {
        i.state == gust_model::InvocationState::Expired
    })
    .await;
    assert_eq!(expired.reason, Some(gust_model::DeadReason::MaxAgeExceeded));
    assert_eq!(expired.attempts, 1);
    assert!(expired.is_dead_letter());
    assert_eq!(
        s.invoker.attempts.lock().unwrap().len(),
        1,
        "never ran again"
    );

    // One accepted while no dispatcher runs (Gust down), and found past its max age when
    // one starts again, never runs at all.
    s.stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = enqueue(&s.queue).await;
    s.clock.advance(Duration::from_secs(120));
    let restarted = Dispatcher::new(
        s.queue.clone(),
        s.invoker.clone(),
        Arc::new(Policy(Delivery {
            max_attempts: 10,
            max_age: Duration::from_secs(60),
        })),
        8,
        Duration::from_secs(3600),
    );
    let stop = CancellationToken::new();
    tokio::spawn(restarted.run(stop.clone()));
    let expired = wait_for(&s.queue, &id, |i| i.state.is_terminal()).await;
    assert_eq!(expired.state, gust_model::InvocationState::Expired);
    assert_eq!(expired.attempts, 0);
    assert_eq!(s.invoker.attempts.lock().unwrap().len(), 1, "never ran");
    stop.cancel();
}
