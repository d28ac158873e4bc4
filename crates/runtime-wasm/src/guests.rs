//! Where guests run. WebAssembly guests execute on threads of their own, apart from the runtime
//! that serves the API, the public router and the process tier: a guest that loops until its
//! timeout competes for the CPU with the rest of Gust through the kernel's scheduler (and at a
//! lower priority, the same as process-tier workers), not by occupying the threads that answer
//! everyone else.
//!
//! Between functions, each function's guests take turns: a function has one turn per guest
//! thread, a guest holds one while it is runnable, and a guest that yields (at an epoch tick)
//! hands it to the function's next waiting guest. A function with 150 looping requests then has
//! as many guests in the run queue as one with a single request, not 150 times more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::thread::Thread;

use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSemaphore;

/// How much lower guest threads run than Gust's own (a nice value); the process tier's workers
/// run at the same one, so neither tier starves the other.
const GUEST_NICENESS: i32 = 10;

/// The number of guest threads: one per core.
pub fn guest_threads() -> usize {
    gust_executor::cores()
}

fn guest_runtime() -> &'static Runtime {
    static GUESTS: OnceLock<Runtime> = OnceLock::new();
    GUESTS.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(guest_threads())
            .thread_name("gust-guest")
            // A new guest is spawned from outside, into the runtime's shared queue; a worker
            // thread busy with guests taking turns would otherwise look there only every 61
            // polls (each up to an epoch tick), and a new request would wait behind them.
            .global_queue_interval(1)
            .on_thread_start(|| {
                // Linux keeps a nice value per thread: `0` is the calling thread.
                // SAFETY: setpriority has no memory preconditions.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, GUEST_NICENESS);
                }
            })
            .enable_all()
            .build()
            .expect("the guest runtime's threads start")
    })
}

/// Guests being polled right now (guest code runs only inside a poll), and the epoch tickers to
/// wake when the first one starts. Epochs need to advance only while guest code may run: an
/// idle node's tickers sleep instead of waking 500 times a second.
static POLLING: AtomicUsize = AtomicUsize::new(0);
static TICKERS: Mutex<Vec<Thread>> = Mutex::new(Vec::new());

/// Whether any guest is being polled now.
pub fn polling() -> bool {
    POLLING.load(Ordering::Acquire) > 0
}

/// Has the calling thread, an epoch ticker, woken (`Thread::unpark`) whenever a guest starts
/// being polled after none was; `false` unregisters it.
pub fn register_ticker(on: bool) {
    let me = std::thread::current();
    let mut tickers = TICKERS.lock().expect("tickers lock is never poisoned");
    tickers.retain(|ticker| ticker.id() != me.id());
    if on {
        tickers.push(me);
    }
}

/// Counts a guest's poll in [`POLLING`] while it lasts.
struct Polling;

impl Polling {
    fn enter() -> Self {
        if POLLING.fetch_add(1, Ordering::AcqRel) == 0 {
            for ticker in TICKERS
                .lock()
                .expect("tickers lock is never poisoned")
                .iter()
            {
                ticker.unpark();
            }
        }
        Polling
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A function's turns: as many as there are guest threads.
pub fn new_turns() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(guest_threads()))
}

/// Runs `guest` on the guest threads, one turn of `turns` per poll. The guest stops when the
/// returned handle is dropped (its request was answered, timed out or abandoned).
pub fn spawn<F>(guest: F, turns: Arc<Semaphore>) -> GuestTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    GuestTask(guest_runtime().spawn(Turns::new(guest, turns)))
}

/// A guest running on the guest threads; aborted when dropped.
pub struct GuestTask<T>(JoinHandle<T>);

impl<T> GuestTask<T> {
    /// Stops the guest from elsewhere (at its next yield), however its task is held.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.0.abort_handle()
    }
}

impl<T> Future for GuestTask<T> {
    /// `None` if the guest panicked.
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl<T> Drop for GuestTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `inner` only while holding one of its function's turns. A guest holds a turn while it
/// is runnable: when it yields (wakes itself while polled: an epoch tick is over) it gives the
/// turn to the function's next waiting guest and waits for another at the back of the queue;
/// when it waits for something else (a body, a timer) it gives the turn back and asks again
/// once woken. So at most as many of a function's guests as it has turns are ever in the guest
/// runtime's run queue, and a guest of another function waits behind those few, not behind
/// every runnable guest of a busy function (the run queue alone is first come, first served).
struct Turns<F> {
    inner: Pin<Box<F>>,
    turns: PollSemaphore,
    turn: Option<OwnedSemaphorePermit>,
    /// Tells a yield (a wake during the poll) from a wake by something else.
    watch: Arc<YieldWatch>,
    /// `watch` as the waker `inner` is polled with.
    waker: Waker,
}

impl<F> Turns<F> {
    fn new(inner: F, turns: Arc<Semaphore>) -> Self {
        let watch = Arc::new(YieldWatch::default());
        Self {
            inner: Box::pin(inner),
            turns: PollSemaphore::new(turns),
            turn: None,
            waker: Waker::from(watch.clone()),
            watch,
        }
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.turn.is_none() {
            let Some(turn) = ready!(this.turns.poll_acquire(cx)) else {
                unreachable!("a function's turns are never closed");
            };
            this.turn = Some(turn);
        }
        this.watch.start(cx.waker());
        let polled = {
            let _polling = Polling::enter();
            this.inner
                .as_mut()
                .poll(&mut Context::from_waker(&this.waker))
        };
        let yielded = this.watch.finish();
        // The function's next waiting guest gets the turn.
        this.turn = None;
        if polled.is_pending() && yielded {
            match this.turns.poll_acquire(cx) {
                // Nobody was waiting: run again, holding the turn.
                Poll::Ready(turn) => {
                    this.turn = turn;
                    cx.waker().wake_by_ref();
                }
                // Woken when the turn comes round.
                Poll::Pending => {}
            }
        }
        polled
    }
}

/// The waker a guest is polled with: a wake while the guest is being polled is a yield, noted
/// and not passed on; any other wake goes to the guest's task.
#[derive(Default)]
struct YieldWatch {
    polling: AtomicBool,
    woke_while_polled: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl YieldWatch {
    fn start(&self, task: &Waker) {
        let mut current = self.task.lock().expect("waker lock is never poisoned");
        if !current.as_ref().is_some_and(|w| w.will_wake(task)) {
            *current = Some(task.clone());
        }
        drop(current);
        self.polling.store(true, Ordering::SeqCst);
    }

    /// Whether the guest woke itself while polled.
    fn finish(&self) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        self.woke_while_polled.swap(false, Ordering::SeqCst)
    }
}

impl Wake for YieldWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woke_while_polled.store(true, Ordering::SeqCst);
        } else if let Some(task) = self
            .task
            .lock()
            .expect("waker lock is never poisoned")
            .as_ref()
        {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Spins for `tick`, then yields; `rounds` times. Counts its polls in `polls`.
    struct Spin {
        tick: Duration,
        rounds: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Spin {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.rounds == 0 {
                return Poll::Ready(());
            }
            self.rounds -= 1;
            self.polls.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            while started.elapsed() < self.tick {}
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_guest_counts_as_polled_while_its_code_may_run() {
        // Other tests' guests may be polled at the same time, so only the inside is certain.
        let seen = guest_runtime()
            .block_on(spawn(async { polling() }, new_turns()))
            .unwrap();
        assert!(seen, "the epoch ticker would sleep while this guest runs");
    }

    /// While 150 guests of one function spin, a guest of another function that yields three
    /// times waits for a few of their polls, not for every one of them each time it yields.
    #[test]
    fn a_busy_function_does_not_make_another_wait_behind_all_its_guests() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let busy = new_turns();
            let spun = Arc::new(AtomicUsize::new(0));
            let spinners: Vec<_> = (0..150)
                .map(|_| {
                    let spin = Spin {
                        tick: Duration::from_micros(200),
                        rounds: usize::MAX,
                        polls: spun.clone(),
                    };
                    spawn(spin, busy.clone())
                })
                .collect();
            // Every spinner has started (and all but the turns' worth wait for a turn).
            while spun.load(Ordering::Relaxed) < 300 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let before = spun.load(Ordering::Relaxed);
            let bystander = Spin {
                tick: Duration::from_micros(10),
                rounds: 3,
                polls: Arc::new(AtomicUsize::new(0)),
            };
            spawn(bystander, new_turns()).await.unwrap();
            let meanwhile = spun.load(Ordering::Relaxed) - before;
            drop(spinners);
            // Without turns held while runnable, each of its yields waited for all 150 (about
            // 420 polls for the three); with them a few polls each. The bound leaves room for
            // the bystander's thread being descheduled on a busy machine meanwhile (200 µs a
            // poll: 30 ms of it is 150 polls of the other guest thread).
            assert!(
                meanwhile < 150,
                "the spinners were polled {meanwhile} times while the bystander yielded 3 times"
            );
        });
    }
}
